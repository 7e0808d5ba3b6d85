"""From a video to a ranked 4D scene graph with a trained :class:`PSG4DModel`.

Steps of :meth:`Predictor.predict`:

1. Encode the video (at most ``max_frames`` model frames, resampled uniformly)
   and decode greedily. A source frame takes the mask of the nearest model
   frame, and a model-frame span ``[a, b]`` covers every source frame whose
   nearest model frame lies in ``[a, b]``.
2. Tubes, in ONE batched mask-decoder call: every generated ``[Obj]`` token's
   hidden state and, with ``model.tag_words``, the ``[Obj]`` state of
   ``<tag> [Obj]`` teacher-forced after the generated text for every tagged
   category that no generated triplet mentions (``tag_objects``), so an object
   the greedy text skipped can still take part in the pairings of step 4.
   Each tube is upsampled to the video size and thresholded (logit >
   ``mask_threshold``) one model frame at a time and kept as per-model-frame
   RLEs: memory does not grow with resolution x frames x objects.
3. Objects: the ``[Obj]`` occurrences of the parsed triplets are grouped
   greedily in order: an occurrence joins an earlier object of the same
   category (case-insensitive) whose tube has vIoU >= ``merge_viou`` with it
   over the video's frames (two empty tubes count as equal); otherwise it starts
   a new object. An object keeps the tube of its first occurrence; its score is
   that tube's mean predicted IoU. Tagged objects of step 2 follow.
4. Ranked relations. A candidate's score is the log-probability, under the LLM
   and given the video, of its text ``subject [Obj] predicate object [Obj]``
   (span numbers excluded: they locate a relation, they do not decide whether
   it holds), summed over its tokens:

   * generated triplets: the greedy step log-probabilities of those tokens;
   * alternative predicates of each generated pair: the same text with every
     other predicate of the vocabulary, teacher-forced in the context the
     generated triplet had, keeping the generated span;
   * other pairings: every ordered pair of detected objects that was not
     generated, with every predicate, teacher-forced as one more triplet after
     the generated text (``... ;``); its span is the frames where both tubes are
     present (else where either is, else the whole video). Pairs are taken by
     descending temporal overlap, at most ``max_new_pairs``.

   With region feedback (``model.region``) a candidate's text carries its subject's region after
   the subject ``[Obj]``: the region generation fed after that mention, or for a tagged object the
   region of its decoded tube.

   The context of a teacher-forced candidate is what the LLM read while
   generating (:attr:`Generation.context_ids`, dropped repeats included), and
   the shared context runs once: its KV cache serves every candidate
   (``cached_scoring``; False recomputes it per candidate, the reference path).
   Candidates with the same (subject, object, predicate) are merged (spans
   united, best text score kept). Log-probabilities of different lengths are
   compared as they are: longer names cost more, the same for every candidate
   of a pair. The ranking score adds the tubes' evidence (their predicted
   quality and how long both are present) with the weights chosen on a
   validation split (:mod:`psg4d.infer.ranking`, ``ranking.json`` beside the
   checkpoint); the list is sorted by it and cut at ``max_candidates``.

:meth:`Predictor.score_candidates` stops before the ranking and
:meth:`Predictor.rank` finishes it, so weights can be tried on one set of
candidates (``psg4d tune-ranking``).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch

from psg4d.data.masks import rle_encode_batch, rle_tube_viou
from psg4d.data.schema import MaskTube, ObjectTrack, Relation, SceneGraph4D, Video4D, merge_spans
from psg4d.errors import ConfigError
from psg4d.infer.ranking import RankingWeights, load_ranking
from psg4d.model.batching import resample_indices
from psg4d.model.generation import Generation, SceneGraphGenerator, VideoContext
from psg4d.model.grammar import clean_phrase, parse_scene_graph
from psg4d.model.mask_decoder import upsample_to
from psg4d.model.psg4d_llm import PSG4DModel
from psg4d.model.tokens import OBJ_TOKEN, TRIPLET_SEP
from psg4d.utils.threads import AdaptiveThreads

log = logging.getLogger(__name__)


PREDICT_MODES = ("direct", "chain")


@dataclass
class PredictorConfig:
    mask_threshold: float = 0.0  # on mask logits
    merge_viou: float = 0.5
    max_new_tokens: int | None = None  # None: the model config's
    max_candidates: int = 300
    max_new_pairs: int = 80
    score_batch_size: int = 32
    # Objects the tagging head found (model.tag_words) but the generation never mentioned get a
    # tube from a teacher-forced "<tag> [Obj]" after the generated text, and join the pairings.
    tag_objects: bool = True
    # Score candidates against the shared context's KV cache (False: recompute the context for
    # every candidate; same results, the reference the cached path is tested against).
    cached_scoring: bool = True
    # torch intra-op threads: None adapts before every video to the CPUs other processes leave
    # free (psg4d.utils.threads.AdaptiveThreads); a number fixes it.
    threads: int | None = None
    # "direct": one scene-graph text (this module); "chain": the four chained steps
    # (psg4d.infer.chain; the model must have been trained with model.chain_prob > 0); "auto": the
    # one chosen on validation for the checkpoint (psg4d.infer.predictor_factory.resolve_mode).
    mode: str = "direct"
    # Chain mode: the class names an object of a kind training never named may get (scored by the
    # LLM's language knowledge); None: it names such an object in free text.
    vocabulary: list[str] | None = None

    def __post_init__(self) -> None:
        if self.mode not in (*PREDICT_MODES, "auto"):
            raise ConfigError(f"predict mode must be one of {', '.join(PREDICT_MODES)} or auto, got {self.mode!r}")


@dataclass
class Tube:
    """A predicted tube on the model timeline: one RLE per model frame at the video's size
    (None: empty) and the decoder's mean predicted IoU."""

    rles: list[dict | None]  # [T_m]
    score: float

    def present(self) -> np.ndarray:
        return np.array([r is not None for r in self.rles], dtype=bool)  # [T_m]


@dataclass
class _Candidate:
    subject: int  # index into the merged objects
    object: int
    predicate: str
    spans: list[tuple[int, int]] = field(default_factory=list)  # model-frame spans
    score: float = float("-inf")  # the text's log-probability
    final: float = float("-inf")  # the ranking score (Predictor.rank)


@dataclass
class ScoredCandidates:
    """One video's prediction before the ranking: its objects, every candidate relation with its
    text score, and what the scene graph records (no tensors: many can be held at once)."""

    video_id: str
    num_frames: int
    size: tuple[int, int]
    objects: list[tuple[str, Tube]]
    candidates: list[_Candidate]
    owner: np.ndarray  # [T_video] model frame of each video frame
    meta: dict


class Predictor:
    """Wraps a trained :class:`PSG4DModel`; see the module docstring."""

    def __init__(self, *, model: PSG4DModel, config: PredictorConfig | None = None,
                 ranking: RankingWeights | None = None):
        """``ranking``: the ranking weights (default: the checkpoint's ``ranking.json``, else text only)."""
        self.model = model.eval()
        self.config = config or PredictorConfig()
        self.generator = SceneGraphGenerator(model, cached=self.config.cached_scoring)
        self.prompt = model.prompt
        self.threads = AdaptiveThreads(self.config.threads)
        self.ranking = ranking if ranking is not None else load_ranking(model.checkpoint_dir)

    # ----------------------------------------------------------------- masks
    def tubes(self, ctx: VideoContext, obj_hidden: torch.Tensor, size: tuple[int, int],
              regions: list[int] | None = None) -> list[Tube]:
        """``obj_hidden [N, H]`` -> N tubes at ``size`` (one decoder call). ``regions``: a list that
        gets the region id of each tube (:meth:`SceneGraphGenerator.add_regions`)."""
        if obj_hidden.shape[0] == 0:
            return []
        logits, iou = self.generator.decode_masks(ctx, obj_hidden)  # [N, T_m, h, w], [N, T_m]
        if regions is not None:
            regions.extend(self.generator.add_regions(ctx, logits > 0))
        out = []
        for k in range(logits.shape[0]):
            # one model frame at a time: at a large source size a whole tube's float logits would not be small
            masks = np.stack([(upsample_to(logits[k, t:t + 1], size) > self.config.mask_threshold).cpu().numpy()[0]
                              for t in range(logits.shape[1])])  # [T_m, H, W]
            rles = rle_encode_batch(masks)
            nonempty = masks.reshape(masks.shape[0], -1).any(axis=1)
            out.append(Tube([r if keep else None for r, keep in zip(rles, nonempty)], float(iou[k].float().mean())))
        return out

    # --------------------------------------------------------------- objects
    def _merge_objects(self, occurrences: dict[int, str], tubes: list[Tube], weights: np.ndarray):
        """``[Obj]`` index -> merged object index; plus the objects' (category, tube). ``weights [T_m]``:
        video frames per model frame, so vIoU is the one of the video-length tubes."""
        objects: list[tuple[str, Tube]] = []
        assign: dict[int, int] = {}
        for k in sorted(occurrences):
            cat = occurrences[k]
            for j, (ocat, otube) in enumerate(objects):
                same = ocat.lower() == cat.lower()
                # two empty tubes count as equal (module docstring, step 3): empty=1.0, not the metric's 0
                if same and rle_tube_viou(otube.rles, tubes[k].rles, weights, empty=1.0) >= self.config.merge_viou:
                    assign[k] = j
                    break
            else:
                assign[k] = len(objects)
                objects.append((cat, tubes[k]))
        return assign, objects

    # ------------------------------------------------------------ candidates
    def _triplet_ids(self, subj: str, pred: str, obj: str, region: int | None = None) -> list[int]:
        """``subj [Obj] pred obj [Obj]``, with the subject's region id after its ``[Obj]`` (region feedback)."""
        ids = self.prompt.text_ids(f"{subj} {OBJ_TOKEN} {pred} {obj} {OBJ_TOKEN}")
        return ids if region is None else self.model.with_regions(ids, [region])

    def _start_of(self, tokens: list[int], obj_pos: int) -> int:
        """First token of the triplet whose subject [Obj] is at ``obj_pos``: after the last separator."""
        for p in range(obj_pos - 1, -1, -1):
            if tokens[p] in self.prompt.sep_ids:
                return p + 1
        return 0

    def _predicates(self, parsed) -> list[str]:
        vocab = [clean_phrase(p) for p in self.model.config.predicate_vocab if clean_phrase(p)]
        seen = {p.lower() for p in vocab}
        for t in parsed:
            if t.predicate.lower() not in seen:
                seen.add(t.predicate.lower())
                vocab.append(t.predicate)
        return vocab

    def _after_text(self, gen: Generation) -> list[int]:
        """What the LLM had read at the end of generation, then a separator: the context of one
        more triplet."""
        context = gen.context_after(self.prompt.ids.eos)
        return context + self.prompt.text_ids(TRIPLET_SEP) if context else []

    def _after_end(self, gen: Generation) -> list[int]:
        """The text as the LLM read it, its ``<eos>`` and a separator: where a model trained with
        ``supervise_all_objects`` learned the tubes of objects no triplet mentions."""
        return gen.context_after(self.prompt.ids.eos) + [self.prompt.ids.eos] + self.prompt.text_ids(TRIPLET_SEP)

    def predict(self, video: Video4D, *, mask_size: tuple[int, int] | None = None) -> SceneGraph4D:
        """The ranked scene graph of ``video``. ``mask_size`` (H, W): the size of the masks written
        (default: the video's); a video read downscaled still gets masks at its source resolution."""
        return self.rank(self.score_candidates(video, mask_size=mask_size))

    def score_candidates(self, video: Video4D, *, mask_size: tuple[int, int] | None = None) -> ScoredCandidates:
        """Steps 1-4 of the module docstring: everything but the ranking."""
        video.validate(video.video_id or "video")
        size = mask_size or (video.height, video.width)
        self.threads()
        ctx = self.generator.encode_video(video)
        gen = self.generator.generate(ctx, max_new_tokens=self.config.max_new_tokens)
        parsed = parse_scene_graph(gen.text, predicates=self.model.config.predicate_vocab or None,
                                   num_frames=ctx.num_frames)
        model_idx = resample_indices(video.num_frames, ctx.num_frames)  # [T_m] position of each model frame
        owner = np.abs(np.arange(video.num_frames)[:, None] - model_idx[None, :]).argmin(axis=1)  # [T_video]
        n_tok = gen.obj_hidden.shape[0]
        triplets = [t for t in parsed.triplets if t.subject_obj_index < n_tok and t.object_obj_index < n_tok]
        assign, objects, regions = self._objects(ctx, gen, triplets, size, owner)
        cands = self._candidates(ctx, gen, triplets, assign, objects, regions)
        return ScoredCandidates(video_id=video.video_id, num_frames=video.num_frames, size=size, objects=objects,
                                candidates=list(cands.values()), owner=owner, meta=self._graph_meta(gen, parsed.dropped))

    def ranked(self, objects: list[tuple[str, Tube]], candidates: Sequence[_Candidate],
               weights: RankingWeights | None = None) -> list[_Candidate]:
        """``candidates`` with their ranking score (``final``), best first, at most ``max_candidates``."""
        w = weights or self.ranking
        presence = [tube.present() for _, tube in objects]
        for c in candidates:
            c.final = w.score(c.score, objects[c.subject][1].score, objects[c.object][1].score,
                              presence[c.subject] & presence[c.object])
        return sorted(candidates, key=lambda c: -c.final)[: self.config.max_candidates]

    def rank(self, scored: ScoredCandidates, weights: RankingWeights | None = None) -> SceneGraph4D:
        """The scene graph of ``scored`` with its candidates ranked by ``weights`` (default: the
        predictor's); ``meta["ranking"]`` records them."""
        w = weights or self.ranking
        ranked = self.ranked(scored.objects, scored.candidates, w)
        return self._graph(scored.video_id, scored.num_frames, scored.size, dict(scored.meta, ranking=asdict(w)),
                           scored.objects, ranked, scored.owner)

    def _objects(self, ctx: VideoContext, gen: Generation, triplets, size: tuple[int, int], owner: np.ndarray):
        """Steps 2-3 of the module docstring: ``[Obj]`` index -> object index, the objects'
        (category, tube): the generated ones merged, then the tagged ones no triplet mentions; and
        with region feedback each object's region id (else an empty list)."""
        cfg = self.config
        occurrences: dict[int, str] = {}
        for t in triplets:
            occurrences.setdefault(t.subject_obj_index, t.subject)
            occurrences.setdefault(t.object_obj_index, t.object)
        named = {c.lower() for c in occurrences.values()}
        missing = [t for t in (ctx.tags or []) if t.lower() not in named] if cfg.tag_objects else []
        hidden = gen.obj_hidden
        if missing:
            context = self._after_end(gen) if self.model.config.supervise_all_objects else self._after_text(gen)
            tag_hidden = self.generator.obj_hidden_after(ctx, context, missing,
                                                         batch_size=cfg.score_batch_size)
            hidden = torch.cat([hidden, tag_hidden.to(hidden.dtype)])
        n_tok = gen.obj_hidden.shape[0]
        tube_regions: list[int] | None = [] if self.generator.regions_on else None
        tubes = self.tubes(ctx, hidden, size, tube_regions)
        weights = np.bincount(owner, minlength=ctx.num_frames)  # [T_m] video frames each model frame stands for
        assign, objects = self._merge_objects(occurrences, tubes[:n_tok], weights)
        regions: list[int] = []
        if tube_regions is not None:
            # an object reads as the region generation fed after its first mention; a tagged one, its tube's
            first = {j: k for k, j in sorted(assign.items(), reverse=True)}
            regions = [gen.obj_regions[first[j]] for j in range(len(objects))] + tube_regions[n_tok:]
        return assign, objects + list(zip(missing, tubes[n_tok:])), regions

    def _candidates(self, ctx: VideoContext, gen: Generation, triplets, assign: dict[int, int],
                    objects: list[tuple[str, Tube]], regions: list[int]) -> dict[tuple[int, int, str], _Candidate]:
        """Step 4 of the module docstring: every candidate relation with its best score. ``regions``:
        each object's region id (empty without region feedback)."""
        cfg, generator = self.config, self.generator
        obj_pos = [i for i, tid in enumerate(gen.token_ids) if tid == self.model.ids.obj]
        predicates = self._predicates(triplets)
        cands: dict[tuple[int, int, str], _Candidate] = {}

        def add(s: int, o: int, p: str, spans: list[tuple[int, int]], score: float) -> None:
            c = cands.setdefault((s, o, p.lower()), _Candidate(s, o, p))
            c.spans = merge_spans(c.spans + spans)
            c.score = max(c.score, score)

        requests, alternatives = [], []  # alternative predicates of every generated triplet, scored together
        for t in triplets:
            s, o = assign[t.subject_obj_index], assign[t.object_obj_index]
            start = self._start_of(gen.token_ids, obj_pos[t.subject_obj_index])
            end = obj_pos[t.object_obj_index]
            add(s, o, t.predicate, [(t.start, t.end)], float(sum(gen.step_logprobs[start : end + 1])))
            alts = [p for p in predicates if p.lower() != t.predicate.lower()]
            region = gen.obj_regions[t.subject_obj_index] if regions else None
            requests.append((gen.context_before(start),
                             [self._triplet_ids(t.subject, p, t.object, region) for p in alts]))
            alternatives.append((s, o, alts, (t.start, t.end)))
        for (s, o, alts, span), scores in zip(alternatives, generator.score_many(ctx, requests,
                                                                                 batch_size=cfg.score_batch_size)):
            for p, sc in zip(alts, scores):
                add(s, o, p, [span], sc)

        generated_pairs = {(c.subject, c.object) for c in cands.values()}
        presence = [tube.present() for _, tube in objects]
        pairs = [(a, b) for a in range(len(objects)) for b in range(len(objects))
                 if a != b and (a, b) not in generated_pairs]
        pairs.sort(key=lambda ab: -int((presence[ab[0]] & presence[ab[1]]).sum()))
        pairs = pairs[: cfg.max_new_pairs]
        if pairs and predicates:
            keys = [(a, b, p) for a, b in pairs for p in predicates]
            conts = [self._triplet_ids(objects[a][0], p, objects[b][0], regions[a] if regions else None)
                     for a, b, p in keys]
            scores = generator.score_continuations(ctx, self._after_text(gen), conts, batch_size=cfg.score_batch_size)
            for (a, b, p), sc in zip(keys, scores):
                add(a, b, p, [self._pair_span(presence[a], presence[b])], sc)
        return cands

    @staticmethod
    def _pair_span(pa: np.ndarray, pb: np.ndarray) -> tuple[int, int]:
        for frames in (pa & pb, pa | pb):
            hit = np.nonzero(frames)[0]
            if hit.size:
                return int(hit[0]), int(hit[-1])
        return 0, len(pa) - 1

    @staticmethod
    def _graph_meta(gen: Generation, dropped) -> dict:
        return {"generated_text": gen.text, "dropped_triplets": dropped, "num_generated_tokens": len(gen.token_ids),
                "depth_source": gen.context.depth_source,
                **({"tags": list(gen.context.tags)} if gen.context.tags is not None else {})}

    def _scene_graph(self, video, size, gen, dropped, objects, ranked, owner) -> SceneGraph4D:
        """The scene graph of already ranked candidates (their ``final`` scores) of ``video``."""
        meta = dict(self._graph_meta(gen, dropped), ranking=asdict(self.ranking))
        return self._graph(video.video_id, video.num_frames, size, meta, objects, ranked, owner)

    def _graph(self, video_id: str, num_frames: int, size, meta: dict, objects, ranked, owner) -> SceneGraph4D:
        # a video frame shows its model frame's mask: the RLE dicts are shared, not copied
        tracks = [
            ObjectTrack(object_id=i, category=cat, score=tube.score,
                        tube=MaskTube(height=size[0], width=size[1], rles=[tube.rles[m] for m in owner]))
            for i, (cat, tube) in enumerate(objects)
        ]
        relations = []
        for c in ranked:
            spans = []
            for a, b in c.spans:
                covered = np.nonzero((owner >= a) & (owner <= b))[0]
                if covered.size:
                    spans.append((int(covered[0]), int(covered[-1])))
            if spans:
                relations.append(Relation(c.subject, c.object, c.predicate, merge_spans(spans), score=c.final))
        cfg = self.model.config
        return SceneGraph4D(
            video_id=video_id,
            num_frames=num_frames,
            height=size[0],
            width=size[1],
            objects=tracks,
            relations=relations,
            object_vocab=list(cfg.object_vocab) or None,
            predicate_vocab=list(cfg.predicate_vocab) or None,
            meta=meta,
        )
