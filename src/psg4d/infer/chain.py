"""Chained inference: describe and name the objects, pick the interacting pairs, name each
relation, decide its span: four turns over the same visual tokens (:mod:`psg4d.model.chain_text`).

:meth:`ChainPredictor.predict`:

1. **describe** — the prompt is the chain's first step; greedy decoding to ``<eos>``. Each listed
   object's ``[Obj]`` hidden state prompts its tube (one batched decoder call). With an attribute
   head (``model.attribute_loss_weight``, :mod:`psg4d.model.attributes`) each tube's appearance is
   read from the frames; a read description training never connected to a category makes it an
   **unknown object**, named from that description by language alone. Otherwise, an object whose
   description is one the training graphs gave a category keeps the name the model wrote; one
   whose description training never saw, or whose name is not a training category, is named
   by :class:`~psg4d.infer.categorise.LanguageCategoriser` (the LLM's language knowledge, from
   the description alone): this is how a category that no training data showed can be named.
   The namer is the 4D-LLM's own LLM with its adapters off, or another pretrained LM
   (``PredictorConfig.namer``, ``psg4d predict --namer gemma3-270m``) where the 4D-LLM's was
   trained from scratch and knows no language.
2. **pairs**, 3. **relation**, 4. **span** — each prompt is appended after everything the LLM
   read so far (its KV cache continues) and decoding runs to the next ``<eos>``.

Every turn is decoded under its grammar (:mod:`psg4d.model.chain_grammar`, applied token by token
by :class:`~psg4d.model.constrained.GrammarLogitsProcessor`; ``PredictorConfig.constrained``):
numbered items, object numbers the describe turn listed, pairs the pairs turn listed, frames inside
the clip, and the end of the answer after the last item. The grammar's length bound is the turn's
token budget, so no turn runs to a limit; the budget of the last three follows from the objects
listed. The recorded step scores stay the model's own (unconstrained) log-probabilities.

Ranking (recall at K needs more than the greedy answers), as the direct predictor ranks: a
candidate's score is the log-probability of its relation line ``s p o`` under the LLM: the
greedy answer's lines with their own step scores; every other predicate of an answered pair
teacher-forced in the context that line had; every other ordered pair (those the pairs step
listed first, then by how long both tubes are present, at most ``max_new_pairs``) with every
predicate, teacher-forced as one more line after the relation answer. The pairs step decides
through the context: the relation answer is written after it. A candidate's spans are the span
step's for that triplet, else the frames where both tubes are present.

Every turn is kept in ``meta["chain"]["steps"]`` (prompt, answer, how it stopped, its token budget,
what was read from it and the problems met), so a person can follow the model's reasoning; a malformed turn
(unknown object, invalid span, no ``<eos>``) still gives a valid scene graph.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any


from psg4d.data.schema import SceneGraph4D, Video4D
from psg4d.infer.categorise import LanguageCategoriser
from psg4d.infer.predictor import Predictor, PredictorConfig, graph_meta, scene_graph
from psg4d.model.chain_grammar import DescribeGrammar, PairsGrammar, RelationGrammar, SpanGrammar
from psg4d.model.chain_text import (
    STEPS, ChainObject, normalize_description, parse_describe, parse_pairs, parse_relations, parse_spans,
)
from psg4d.model.constrained import GrammarLogitsProcessor, token_alphabet
from psg4d.model.generation import Generation
from psg4d.model.grammar import clean_phrase
from psg4d.model.llm import load_language_model
from psg4d.model.psg4d_llm import PSG4DModel
from psg4d.model.reading import Candidate, frame_owner, pair_span
from psg4d.model.tokens import TRIPLET_SEP

log = logging.getLogger(__name__)


class ChainPredictor:
    """Chained inference with a model trained with ``model.chain_prob > 0`` (see the module docstring)."""

    def __init__(self, *, model: PSG4DModel, config: PredictorConfig | None = None):
        self.base = Predictor(model=model, config=config)
        self.model = self.base.model
        self.config = self.base.config
        self.generator = self.base.generator
        self.prompt = model.prompt
        mc = model.config
        if mc.chain_prob <= 0:
            log.warning("this checkpoint was not trained on chained text (model.chain_prob = 0): its chain "
                        "answers will be poor; use --mode direct")
        self.vocab = {c.lower(): c for c in mc.object_vocab}
        self.known_descriptions = {normalize_description(d): c for c, ds in mc.category_descriptions.items()
                                   for d in ds}
        ids = self.prompt.ids
        self._alphabet = token_alphabet(model.tokenizer, obj_id=ids.obj, eos_id=ids.eos,
                                        banned=self.prompt.banned_ids()) if self.config.constrained else None
        self.namer = self._namer(model)

    def _namer(self, model: PSG4DModel) -> LanguageCategoriser:
        """The language namer: the LLM ``config.namer`` names (loaded once, frozen, on the model's
        device), else the 4D-LLM's own LLM, whose adapters it switches off to name."""
        llm, tokenizer = model.llm, model.tokenizer
        if self.config.namer is not None:
            llm, tokenizer = load_language_model(self.config.namer)
            llm = llm.to(next(model.parameters()).device)
            log.info("objects of unseen kinds are named by %s", self.config.namer)
        return LanguageCategoriser(llm=llm, tokenizer=tokenizer, examples=model.config.category_descriptions,
                                   vocabulary=self.config.vocabulary)

    # what every family's predictor offers the commands (psg4d.families.VideoPredictor)
    max_frames = property(lambda self: self.base.max_frames)
    image_size = property(lambda self: self.base.image_size)
    max_candidates = property(lambda self: self.base.max_candidates)

    # ------------------------------------------------------------- turns
    def _grammar(self, step: str, answers: list[str], num_frames: int):
        """The grammar of turn ``step`` given the earlier turns' ``answers`` (psg4d.model.chain_grammar)."""
        if step == "describe":
            return DescribeGrammar(self.config.chain_max_objects)
        known = [o.index for o in parse_describe(answers[0]).items]
        if step == "pairs":
            return PairsGrammar(known)
        pairs = parse_pairs(answers[1], set(known)).items
        if step == "relation":
            return RelationGrammar(pairs)
        relations = parse_relations(answers[2], set(known)).items
        return SpanGrammar(relations, num_frames - 1)

    def _turns(self, ctx) -> tuple[list[dict[str, Any]], list[Generation]]:
        """Run the four turns -> (step records, generations). Constrained (the default), each turn
        is decoded under its grammar, whose length bound is the turn's token budget
        (``max_new_tokens``, when set, caps it); free, every turn gets the same limit."""
        eos = self.prompt.ids.eos
        records, gens = [], []
        context: list[int] = []
        for k, step in enumerate(STEPS):
            text = "" if k == 0 else self.prompt.chain_templates.render(step, num_frames=ctx.num_frames)
            context = context + (self.prompt.text_ids(text) if text else [])
            processor = None
            limit = self.config.max_new_tokens or self.model.config.chain_step_tokens
            if self.config.constrained:
                grammar = self._grammar(step, [r["answer"] for r in records], ctx.num_frames)
                processor = GrammarLogitsProcessor(grammar, self._alphabet)
                limit = min(grammar.max_chars() + 1, self.config.max_new_tokens or grammar.max_chars() + 1)
            gen = self.generator.generate(ctx, max_new_tokens=limit, after=context, logits_processor=processor,
                                          max_repeats=None if processor is not None else 3)
            ended = bool(gen.token_ids) and gen.token_ids[-1] == eos
            records.append({"step": step, "prompt": text or self.prompt.chain_templates.render(step, num_frames=ctx.num_frames),
                            "answer": gen.text, "stopped": "eos" if ended else "length", "budget": limit,
                            "items": [], "problems": []})
            if not ended:
                records[-1]["problems"].append(f"{step}: no end of answer within {limit} tokens; cut there")
            if processor is not None and processor.dead_end:
                records[-1]["problems"].append(f"{step}: the tokenizer cannot spell what the grammar needed; ended")
            gens.append(gen)
            context = gen.context_after(eos) + [eos]
        return records, gens

    # ----------------------------------------------------------- objects
    def name_object(self, obj: ChainObject, read: str | None = None) -> dict[str, Any]:
        """The object's category and where it came from. ``read``: what the attribute head read
        from the frames under its tube; one training never connected to a category makes it an
        **unknown object**, named from that description by language alone."""
        if self.config.unknown_objects and read is not None and normalize_description(read) not in self.known_descriptions:
            naming = self.namer(read)
            return {"category": naming.name or obj.category, "model_category": obj.category,
                    "source": f"language ({naming.how}; unknown object: the frames read {read!r})",
                    **({"language_score": naming.score} if naming.score is not None else {})}
        seen = normalize_description(obj.description) in self.known_descriptions
        if seen and obj.category.lower() in self.vocab:
            return {"category": self.vocab[obj.category.lower()], "source": "model"}
        naming = self.namer(obj.description or obj.category)
        why = "unseen description" if not seen else "name outside the training vocabulary"
        return {"category": naming.name or obj.category, "source": f"language ({naming.how}; {why})",
                "model_category": obj.category, **({"language_score": naming.score} if naming.score is not None else {})}

    def predict(self, video: Video4D, *, mask_size: tuple[int, int] | None = None) -> SceneGraph4D:
        """The ranked scene graph of ``video`` by chained inference (``mask_size`` as in :class:`Predictor`)."""
        video.validate(video.video_id or "video")
        size = mask_size or (video.height, video.width)
        self.base.threads()
        ctx = self.generator.encode_video(video, chain=True)
        records, gens = self._turns(ctx)
        owner = frame_owner(video.num_frames, ctx.num_frames)  # [T_video]

        described = parse_describe(records[0]["answer"])
        n_tok = gens[0].obj_hidden.shape[0]
        listed = [o for o in described.items if o.obj_index < n_tok]
        if len(listed) < len(described.items):
            described.problems.append("describe: an object's [Obj] was never read; skipped")
        hidden = gens[0].obj_hidden[[o.obj_index for o in listed]]
        tubes = self.base.reader.tubes(ctx, hidden, size) if listed else []
        read = self.generator.read_descriptions(ctx, video, hidden)
        names = [self.name_object(o, r) for o, r in zip(listed, read)]
        position = {o.index: i for i, o in enumerate(listed)}  # the answer's number -> object index
        records[0]["items"] = [{"index": o.index, "description": o.description, "object_id": position[o.index], **n}
                               for o, n in zip(listed, names)]
        records[0]["problems"] += described.problems
        known = set(position)
        pairs = parse_pairs(records[1]["answer"], known)
        relations = parse_relations(records[2]["answer"], known, self.model.config.predicate_vocab or None)
        spans = parse_spans(records[3]["answer"], known, ctx.num_frames)
        for rec, res in zip(records[1:], (pairs, relations, spans)):
            rec["items"] = [list(x) for x in res.items]
            rec["problems"] += res.problems
        for s, p, o in relations.items:
            if (s, o) not in pairs.items:
                records[2]["problems"].append(f"relation: {s} {p} {o} is for a pair the pairs step did not list")
        listed_rel = set(relations.items)
        for s, p, o, _, _ in spans.items:
            if (s, p, o) not in listed_rel:
                records[3]["problems"].append(f"span: {s} {p} {o} is a relation the relation step did not list")

        objects = [(n["category"], t) for n, t in zip(names, tubes)]
        cands = self._candidates(ctx, gens[2], objects, position, pairs.items, relations.items, spans.items)
        ranked = self.base.ranked(objects, list(cands.values()))
        meta = dict(graph_meta(gens[0], 0), ranking=asdict(self.base.ranking))
        graph = scene_graph(self.model.config, video.video_id, video.num_frames, size, meta, objects, ranked, owner)
        for track, o, n, r in zip(graph.objects, listed, names, read):
            track.attributes.update({"description": o.description, "category_source": n["source"],
                                     **({"read_description": r} if r is not None else {}),
                                     **({"model_category": n["model_category"]} if "model_category" in n else {})})
        graph.meta["generated_text"] = " | ".join(r["answer"] for r in records)
        graph.meta["num_generated_tokens"] = sum(len(g.token_ids) for g in gens)
        graph.meta["mode"] = "chain"
        graph.meta["chain"] = {"steps": records, "problems": sum(len(r["problems"]) for r in records),
                               "namer": self.config.namer or "own LLM"}
        return graph

    # -------------------------------------------------------- candidates
    def _answer_lines(self, gen: Generation, known: set[int]):
        """The relation answer's lines as ``(s, predicate, o, first token, end token)``, read one
        line at a time so each keeps its own tokens (and so its context and score)."""
        sep, eos = self.prompt.sep_ids, self.prompt.ids.eos
        vocab = self.model.config.predicate_vocab or None
        lines, start = [], 0
        ids = gen.token_ids
        for i in range(len(ids) + 1):
            if i < len(ids) and ids[i] not in sep and ids[i] != eos:
                continue
            res = parse_relations(self.generator.decode_grammar(ids[start:i]), known, vocab)
            if len(res.items) == 1:
                lines.append((*res.items[0], start, i))
            start = i + 1
        return lines

    def _candidates(self, ctx, gen: Generation, objects, position, pairs, relations, spans):
        """Relation candidates (the module docstring's ranking) keyed by (subject, object, predicate)."""
        cfg = self.config
        n = len(objects)
        if n < 2:
            return {}
        number = {i: k for k, i in position.items()}  # object index -> the number the answers use
        presence = [tube.present() for _, tube in objects]
        predicates = [clean_phrase(p) for p in self.model.config.predicate_vocab if clean_phrase(p)]
        for _, p, _ in relations:
            if p.lower() not in {q.lower() for q in predicates}:
                predicates.append(p)
        span_of: dict[tuple[int, str, int], list[tuple[int, int]]] = {}
        for s, p, o, a, b in spans:
            span_of.setdefault((position[s], p.lower(), position[o]), []).append((a, b))
        cands: dict[tuple[int, int, str], Candidate] = {}

        def add(a: int, b: int, p: str, score: float) -> None:
            c = cands.setdefault((a, b, p.lower()), Candidate(a, b, p))
            c.spans = span_of.get((a, p.lower(), b)) or [pair_span(presence[a], presence[b])]
            c.score = max(c.score, score)

        t = self.prompt.text_ids
        requests, owners = [], []
        for s, p, o, first, end in self._answer_lines(gen, set(position)):
            a, b = position[s], position[o]
            add(a, b, p, float(sum(gen.step_logprobs[first:end])))
            alts = [q for q in predicates if q.lower() != p.lower()]
            requests.append((gen.context_before(first), [t(f"{s} {q} {o}") for q in alts]))
            owners.append([(a, b, q) for q in alts])
        answered = {(c.subject, c.object) for c in cands.values()}
        listed = [(position[s], position[o]) for s, o in pairs]
        rest = [(a, b) for a in range(n) for b in range(n) if a != b and (a, b) not in answered]
        rest.sort(key=lambda ab: (ab not in listed, -int((presence[ab[0]] & presence[ab[1]]).sum())))
        rest = rest[: cfg.max_new_pairs]
        if rest and predicates:
            after = gen.context_after(self.prompt.ids.eos) + t(TRIPLET_SEP)
            requests.append((after, [t(f"{number[a]} {q} {number[b]}") for a, b in rest for q in predicates]))
            owners.append([(a, b, q) for a, b in rest for q in predicates])
        for keys, scores in zip(owners, self.generator.score_many(ctx, requests, batch_size=cfg.score_batch_size)):
            for (a, b, q), sc in zip(keys, scores):
                add(a, b, q, sc)
        return cands
