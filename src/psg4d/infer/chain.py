"""Chained inference: describe and name the objects, pick the interacting pairs, name each
relation, decide its span: four turns over the same visual tokens (:mod:`psg4d.model.chain_text`).

:meth:`ChainPredictor.predict`:

1. **describe** — the prompt is the chain's first step; greedy decoding to ``<eos>``. Each listed
   object's ``[Obj]`` hidden state prompts its tube (one batched decoder call). With an attribute
   head (``model.attribute_loss_weight``, :mod:`psg4d.model.attributes`) each tube's appearance is
   read from the frames, with its margin over the nearest training category's. The objects are
   named when the prediction is ranked (:meth:`ChainPredictor.rank`), by
   :class:`~psg4d.infer.chain_naming.ObjectNamer`: the written name, or, for an **unknown object**
   (a reading no training category has, by more than the margin chosen on validation) or an unseen
   written description, the language knowledge of the 4D-LLM's own LLM (adapters off) or of another
   pretrained LM (``PredictorConfig.namer``, ``psg4d predict --namer gemma3-270m``): this is how a
   category that no training data showed can be named.
   As the direct predictor does (``PredictorConfig.tag_objects``), each category the tagging head
   found that the answer does not name joins the answer as one more item, teacher-forced in the
   training text's form (``k <its training description> : <category> [Obj]``) before the
   ``<eos>``, so its ``[Obj]`` prompts a tube and the later turns can pair it. Items of the same
   category whose tubes overlap (vIoU >= ``merge_viou``) are one object, as in the direct reading
   (:func:`~psg4d.model.reading.merge_objects`): every number they had refers to it.
2. **pairs**, 3. **relation**, 4. **span** — each prompt is appended after everything the LLM
   read so far (its KV cache continues) and decoding runs to the next ``<eos>``.

Every turn is decoded under its grammar (:mod:`psg4d.model.chain_grammar`, applied token by token
by :class:`~psg4d.model.constrained.GrammarLogitsProcessor`; ``PredictorConfig.constrained``):
numbered items, object numbers the describe turn listed, pairs the pairs turn listed, frames inside
the clip, and the end of the answer after the last item. The grammar's length bound is the turn's
token budget, so no turn runs to a limit; the budget of the last three follows from the objects
listed. The recorded step scores stay the model's own (unconstrained) log-probabilities.

Ranking (recall at K needs more than the greedy answers), as the direct predictor ranks (with the
tubes' evidence weighted by the chain's own weights where ``psg4d tune-ranking`` chose them): a
candidate's text score is the log-probability of its relation line ``s p o`` under the LLM: the
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

import copy
import logging
from dataclasses import asdict
from typing import Any

import numpy as np
import torch


from psg4d.data.schema import SceneGraph4D, Video4D
from psg4d.infer.chain_naming import ObjectNamer
from psg4d.infer.predictor import Predictor, PredictorConfig, ScoredCandidates, graph_meta, scene_graph
from psg4d.infer.ranking import RankingWeights, load_ranking
from psg4d.model.chain_grammar import DescribeGrammar, PairsGrammar, RelationGrammar, SpanGrammar
from psg4d.model.chain_text import (
    NAME_SEP, STEPS, parse_describe, parse_pairs, parse_relations, parse_spans,
)
from psg4d.model.constrained import GrammarLogitsProcessor, token_alphabet
from psg4d.model.generation import Generation
from psg4d.model.grammar import clean_phrase
from psg4d.model.psg4d_llm import PSG4DModel
from psg4d.model.reading import Candidate, frame_owner, merge_objects, pair_span
from psg4d.model.tokens import OBJ_TOKEN, TRIPLET_SEP

log = logging.getLogger(__name__)



class ChainPredictor:
    """Chained inference with a model trained with ``model.chain_prob > 0`` (see the module docstring)."""

    def __init__(self, *, model: PSG4DModel, config: PredictorConfig | None = None):
        # the chain's own ranking weights where tune-ranking chose them (ranking.json), else the direct ones
        self.base = Predictor(model=model, config=config, ranking=load_ranking(model.checkpoint_dir, mode="chain"))
        self.model = self.base.model
        self.config = self.base.config
        self.generator = self.base.generator
        self.prompt = model.prompt
        mc = model.config
        if mc.chain_prob <= 0:
            log.warning("this checkpoint was not trained on chained text (model.chain_prob = 0): its chain "
                        "answers will be poor; use --mode direct")
        ids = self.prompt.ids
        self._alphabet = token_alphabet(model.tokenizer, obj_id=ids.obj, eos_id=ids.eos,
                                        banned=self.prompt.banned_ids()) if self.config.constrained else None
        self.naming = ObjectNamer(model=model, config=self.config)
        self.namer = self.naming.namer  # the language namer (LanguageCategoriser)

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

    def _turns(self, ctx) -> tuple[list[dict[str, Any]], list[Generation], torch.Tensor | None]:
        """Run the four turns -> (step records, generations, the ``[Obj]`` hidden states of the
        tagged items appended to the describe answer ``[M, H]``, None if none). Constrained (the default), each turn
        is decoded under its grammar, whose length bound is the turn's token budget
        (``max_new_tokens``, when set, caps it); free, every turn gets the same limit."""
        eos = self.prompt.ids.eos
        records, gens = [], []
        tagged = None
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
            context = gen.context_after(eos)
            if k == 0 and ended:
                added, added_ids, hidden = self._tagged_items(ctx, gen.text, context)
                if added:
                    tagged = hidden
                    records[0]["answer"] = f"{gen.text} {added}" if gen.text.strip() else added
                    records[0]["tagged"] = added
                    context = context + added_ids
            context = context + [eos]
        return records, gens, tagged

    def _tagged_items(self, ctx, answer: str, context: list[int]) -> tuple[str, list[int], torch.Tensor]:
        """The items the describe ``answer`` gets for the tagged categories it does not name:
        ``(text, their ids, [Obj] hidden states [M, H])``, each item teacher-forced after the ones
        before it (the module docstring, step 1)."""
        empty = torch.zeros(0, self.model.hidden_size, device=self.generator.device)
        if not self.config.tag_objects or not ctx.tags:
            return "", [], empty
        items = parse_describe(answer).items
        named = {o.category.lower() for o in items}
        missing = [t for t in ctx.tags if t.lower() not in named]
        if not missing:
            return "", [], empty
        descriptions = self.model.config.category_descriptions
        number = max((o.index for o in items), default=0)
        texts, ids, hidden = [], [], []
        for k, tag in enumerate(missing):
            if number + k + 1 > self.config.chain_max_objects:
                break
            described = (descriptions.get(tag) or [tag])[0]
            sep = f"{TRIPLET_SEP} " if items or k else ""
            phrase = f"{sep}{number + k + 1} {described} {NAME_SEP} {tag}"
            hidden.append(self.generator.obj_hidden_after(ctx, context + ids, [phrase]))
            texts.append(f"{phrase} {OBJ_TOKEN}")
            ids = ids + self.prompt.text_ids(texts[-1])
        return " ".join(texts), ids, torch.cat(hidden) if hidden else empty

    # ----------------------------------------------------------- objects
    def predict(self, video: Video4D, *, mask_size: tuple[int, int] | None = None) -> SceneGraph4D:
        """The ranked scene graph of ``video`` by chained inference (``mask_size`` as in :class:`Predictor`)."""
        return self.rank(self.score_candidates(video, mask_size=mask_size))

    def score_candidates(self, video: Video4D, *, mask_size: tuple[int, int] | None = None) -> ScoredCandidates:
        """Everything but the naming and the ranking (both in :meth:`rank`): the four turns, the
        objects' tubes and readings, every candidate relation with its text score."""
        video.validate(video.video_id or "video")
        size = mask_size or (video.height, video.width)
        self.base.threads()
        ctx = self.generator.encode_video(video, chain=True)
        records, gens, tagged = self._turns(ctx)
        owner = frame_owner(video.num_frames, ctx.num_frames)  # [T_video]

        described = parse_describe(records[0]["answer"])
        all_hidden = gens[0].obj_hidden
        if tagged is not None:
            all_hidden = torch.cat([all_hidden, tagged.to(all_hidden)])
        n_tok = all_hidden.shape[0]
        listed = [o for o in described.items if o.obj_index < n_tok]
        if len(listed) < len(described.items):
            described.problems.append("describe: an object's [Obj] was never read; skipped")
        hidden = all_hidden[[o.obj_index for o in listed]]
        tubes = self.base.reader.tubes(ctx, hidden, size) if listed else []
        # items of one category with overlapping tubes are one object (module docstring, step 1)
        weights = np.bincount(owner, minlength=ctx.num_frames)  # [T_m] video frames per model frame
        assign, merged = merge_objects({i: o.category for i, o in enumerate(listed)}, tubes, weights,
                                       merge_viou=self.config.merge_viou)  # item -> object (in order)
        first = [min(i for i, j in assign.items() if j == m) for m in range(len(merged))]  # each object's first item
        kept = [listed[i] for i in first]
        read = self.generator.read_attributes(ctx, video, hidden[first])
        tubes = [tubes[i] for i in first]
        position = {o.index: assign[i] for i, o in enumerate(listed)}  # the answer's number -> object index
        items = [{"index": o.index, "description": o.description, "object_id": position[o.index],
                  **({"same_object_as": kept[position[o.index]].index} if i not in first else {})}
                 for i, o in enumerate(listed)]
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

        objects = [(o.category, t) for o, t in zip(kept, tubes)]  # named in rank()
        cands = self._candidates(ctx, gens[2], objects, position, pairs.items, relations.items, spans.items)
        meta = dict(graph_meta(gens[0], 0), generated_text=" | ".join(r["answer"] for r in records),
                    num_generated_tokens=sum(len(g.token_ids) for g in gens), mode="chain",
                    chain={"steps": records, "problems": sum(len(r["problems"]) for r in records),
                           "namer": self.config.namer or "own LLM"})
        return ScoredCandidates(video_id=video.video_id, num_frames=video.num_frames, size=size, objects=objects,
                                candidates=list(cands.values()), owner=owner, meta=meta,
                                extra={"written": kept, "read": read, "items": items})

    def rank(self, scored: ScoredCandidates, weights: RankingWeights | None = None) -> SceneGraph4D:
        """The scene graph of :meth:`score_candidates`' ``scored``: its objects named
        (:class:`~psg4d.infer.chain_naming.ObjectNamer`), its candidates ranked by ``weights``
        (default: the predictor's)."""
        w = weights or self.base.ranking
        written, read = scored.extra["written"], scored.extra["read"]
        names = [self.naming(o, r) for o, r in zip(written, read)]
        objects = [(n["category"], t) for n, (_, t) in zip(names, scored.objects)]
        ranked = self.base.ranked(objects, scored.candidates, w)
        meta = copy.deepcopy(scored.meta)
        meta.update(ranking=asdict(w))
        meta["chain"]["steps"][0]["items"] = [dict(i, **names[i["object_id"]]) for i in scored.extra["items"]]
        meta["chain"]["unknown_margin"] = self.naming.record()
        graph = scene_graph(self.model.config, scored.video_id, scored.num_frames, scored.size, meta, objects, ranked,
                            scored.owner)
        for track, o, n, r in zip(graph.objects, written, names, read):
            track.attributes.update({"description": o.description, "category_source": n["source"],
                                     **({"read_description": r[0], "read_margin": r[1]} if r is not None else {}),
                                     **({"model_category": n["model_category"]} if "model_category" in n else {})})
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
        number: dict[int, int] = {}  # object index -> the number the answers use (its first item's)
        for k, i in position.items():
            number.setdefault(i, k)
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
            if a == b:  # two numbers of one merged object
                continue
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
