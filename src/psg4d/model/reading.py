"""One call that reads a video into everything a scene graph needs: :meth:`SceneReader.read`.

Steps (the 4D-LLM's inference; :class:`psg4d.infer.predictor.Predictor` then only ranks the
candidates and writes the :class:`~psg4d.data.schema.SceneGraph4D`):

1. Encode the video (at most ``max_frames`` model frames, resampled uniformly)
   and decode greedily. A source frame takes the mask of the nearest model
   frame (:func:`frame_owner`), and a model-frame span ``[a, b]`` covers every
   source frame whose nearest model frame lies in ``[a, b]``.
2. Tubes, in ONE batched mask-decoder call: every generated ``[Obj]`` token's
   hidden state and, with ``model.tag_words``, the ``[Obj]`` state of
   ``<tag> [Obj]`` teacher-forced after the generated text for every tagged
   category that no generated triplet mentions (``tag_objects``), so an object
   the greedy text skipped can still take part in the pairings of step 4.
   Each tube is upsampled to the output size and thresholded (logit >
   ``mask_threshold``) one model frame at a time and kept as per-model-frame
   RLEs: memory does not grow with resolution x frames x objects.
3. Objects: the ``[Obj]`` occurrences of the parsed triplets are grouped
   greedily in order: an occurrence joins an earlier object of the same
   category (case-insensitive) whose tube has vIoU >= ``merge_viou`` with it
   over the video's frames (two empty tubes count as equal); otherwise it starts
   a new object. An object keeps the tube of its first occurrence; its score is
   that tube's mean predicted IoU. Tagged objects of step 2 follow.
4. Candidate relations. A candidate's score is the log-probability, under the LLM
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
     present (else where either is, else the whole video, :func:`pair_span`).
     Pairs are taken by descending temporal overlap, at most ``max_new_pairs``.

   With region feedback (``model.region``) a candidate's text carries its subject's region after
   the subject ``[Obj]``: the region generation fed after that mention, or for a tagged object the
   region of its decoded tube.

   The context of a teacher-forced candidate is what the LLM read while
   generating (:attr:`Generation.context_ids`, dropped repeats included), and
   the shared context runs once: its KV cache serves every candidate. Candidates
   with the same (subject, object, predicate) are merged (spans united, best
   text score kept). Log-probabilities of different lengths are compared as
   they are: longer names cost more, the same for every candidate of a pair.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from psg4d.data.masks import rle_encode_batch, rle_tube_viou
from psg4d.data.schema import Video4D, merge_spans
from psg4d.model.batching import resample_indices
from psg4d.model.generation import Generation, SceneGraphGenerator, VideoContext
from psg4d.model.grammar import clean_phrase, parse_scene_graph
from psg4d.model.mask_decoder import upsample_to
from psg4d.model.tokens import OBJ_TOKEN, TRIPLET_SEP


@dataclass(frozen=True, kw_only=True)
class ReadSettings:
    """How :meth:`SceneReader.read` reads a video (steps 1-4 of the module docstring)."""

    max_new_tokens: int | None = None  # None: the model config's
    mask_threshold: float = 0.0  # on mask logits
    merge_viou: float = 0.5
    tag_objects: bool = True
    max_new_pairs: int = 80
    score_batch_size: int = 32


@dataclass
class Tube:
    """A predicted tube on the model timeline: one RLE per model frame at the output size
    (None: empty) and the decoder's mean predicted IoU."""

    rles: list[dict | None]  # [T_m]
    score: float

    def present(self) -> np.ndarray:
        return np.array([r is not None for r in self.rles], dtype=bool)  # [T_m]


@dataclass
class Candidate:
    """One candidate relation between two objects (indices into the read objects)."""

    subject: int
    object: int
    predicate: str
    spans: list[tuple[int, int]] = field(default_factory=list)  # model-frame spans
    score: float = float("-inf")  # the text's log-probability
    final: float = float("-inf")  # the ranking score (psg4d.infer.predictor.Predictor.rank)


@dataclass
class SceneReading:
    """What :meth:`SceneReader.read` returns: the generation (text, ``[Obj]`` states, step
    log-probabilities), the objects with their tubes, every candidate with its text score, and
    the model frame each video frame shows."""

    generation: Generation
    dropped: int  # triplets of the text the parser could not read
    objects: list[tuple[str, Tube]]
    candidates: list[Candidate]
    owner: np.ndarray  # [T_video] model frame of each video frame


def frame_owner(num_video_frames: int, num_model_frames: int) -> np.ndarray:
    """``[T_video]``: the nearest model frame of each video frame."""
    model_idx = resample_indices(num_video_frames, num_model_frames)  # [T_m] position of each model frame
    return np.abs(np.arange(num_video_frames)[:, None] - model_idx[None, :]).argmin(axis=1)


def pair_span(pa: np.ndarray, pb: np.ndarray) -> tuple[int, int]:
    """The span of a pair no text dated: the model frames where both tubes ``[T_m]`` are present,
    else where either is, else the whole clip."""
    for frames in (pa & pb, pa | pb):
        hit = np.nonzero(frames)[0]
        if hit.size:
            return int(hit[0]), int(hit[-1])
    return 0, len(pa) - 1


def merge_objects(occurrences: dict[int, str], tubes: list[Tube], weights: np.ndarray, *,
                  merge_viou: float) -> tuple[dict[int, int], list[tuple[str, Tube]]]:
    """Step 3 of the module docstring: ``[Obj]`` index -> merged object index, and the objects'
    (category, tube). ``weights [T_m]``: video frames per model frame, so vIoU is the one of the
    video-length tubes."""
    objects: list[tuple[str, Tube]] = []
    assign: dict[int, int] = {}
    for k in sorted(occurrences):
        cat = occurrences[k]
        for j, (ocat, otube) in enumerate(objects):
            same = ocat.lower() == cat.lower()
            # two empty tubes count as equal (module docstring, step 3): empty=1.0, not the metric's 0
            if same and rle_tube_viou(otube.rles, tubes[k].rles, weights, empty=1.0) >= merge_viou:
                assign[k] = j
                break
        else:
            assign[k] = len(objects)
            objects.append((cat, tubes[k]))
    return assign, objects


class SceneReader:
    """Reads videos with one model's :class:`SceneGraphGenerator` (see the module docstring)."""

    def __init__(self, generator: SceneGraphGenerator, settings: ReadSettings | None = None):
        self.generator = generator
        self.model = generator.model
        self.prompt = generator.prompt
        self.settings = settings or ReadSettings()

    def read(self, video: Video4D, *, size: tuple[int, int]) -> SceneReading:
        """Steps 1-4 of the module docstring on ``video``; masks at ``size`` (H, W)."""
        video.validate(video.video_id or "video")
        ctx = self.generator.encode_video(video)
        gen = self.generator.generate(ctx, max_new_tokens=self.settings.max_new_tokens)
        parsed = parse_scene_graph(gen.text, predicates=self.model.config.predicate_vocab or None,
                                   num_frames=ctx.num_frames)
        owner = frame_owner(video.num_frames, ctx.num_frames)  # [T_video]
        n_tok = gen.obj_hidden.shape[0]
        triplets = [t for t in parsed.triplets if t.subject_obj_index < n_tok and t.object_obj_index < n_tok]
        assign, objects, regions = self._objects(ctx, gen, triplets, size, owner)
        cands = self._candidates(ctx, gen, triplets, assign, objects, regions)
        return SceneReading(generation=gen, dropped=parsed.dropped, objects=objects, candidates=list(cands.values()),
                            owner=owner)

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
        threshold = self.settings.mask_threshold
        out = []
        for k in range(logits.shape[0]):
            # one model frame at a time: at a large source size a whole tube's float logits would not be small
            masks = np.stack([(upsample_to(logits[k, t:t + 1], size) > threshold).cpu().numpy()[0]
                              for t in range(logits.shape[1])])  # [T_m, H, W]
            rles = rle_encode_batch(masks)
            nonempty = masks.reshape(masks.shape[0], -1).any(axis=1)
            out.append(Tube([r if keep else None for r, keep in zip(rles, nonempty)], float(iou[k].float().mean())))
        return out

    # --------------------------------------------------------------- objects
    def _objects(self, ctx: VideoContext, gen: Generation, triplets, size: tuple[int, int], owner: np.ndarray):
        """Steps 2-3 of the module docstring: ``[Obj]`` index -> object index, the objects'
        (category, tube): the generated ones merged, then the tagged ones no triplet mentions; and
        with region feedback each object's region id (else an empty list)."""
        occurrences: dict[int, str] = {}
        for t in triplets:
            occurrences.setdefault(t.subject_obj_index, t.subject)
            occurrences.setdefault(t.object_obj_index, t.object)
        named = {c.lower() for c in occurrences.values()}
        missing = [t for t in (ctx.tags or []) if t.lower() not in named] if self.settings.tag_objects else []
        hidden = gen.obj_hidden
        if missing:
            context = self._after_end(gen) if self.model.config.supervise_all_objects else self._after_text(gen)
            tag_hidden = self.generator.obj_hidden_after(ctx, context, missing,
                                                         batch_size=self.settings.score_batch_size)
            hidden = torch.cat([hidden, tag_hidden.to(hidden.dtype)])
        n_tok = gen.obj_hidden.shape[0]
        tube_regions: list[int] | None = [] if self.generator.regions_on else None
        tubes = self.tubes(ctx, hidden, size, tube_regions)
        weights = np.bincount(owner, minlength=ctx.num_frames)  # [T_m] video frames each model frame stands for
        assign, objects = merge_objects(occurrences, tubes[:n_tok], weights, merge_viou=self.settings.merge_viou)
        regions: list[int] = []
        if tube_regions is not None:
            # an object reads as the region generation fed after its first mention; a tagged one, its tube's
            first = {j: k for k, j in sorted(assign.items(), reverse=True)}
            regions = [gen.obj_regions[first[j]] for j in range(len(objects))] + tube_regions[n_tok:]
        return assign, objects + list(zip(missing, tubes[n_tok:])), regions

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

    def _candidates(self, ctx: VideoContext, gen: Generation, triplets, assign: dict[int, int],
                    objects: list[tuple[str, Tube]], regions: list[int]) -> dict[tuple[int, int, str], Candidate]:
        """Step 4 of the module docstring: every candidate relation with its best score. ``regions``:
        each object's region id (empty without region feedback)."""
        cands: dict[tuple[int, int, str], Candidate] = {}

        def add(s: int, o: int, p: str, spans: list[tuple[int, int]], score: float) -> None:
            c = cands.setdefault((s, o, p.lower()), Candidate(s, o, p))
            c.spans = merge_spans(c.spans + spans)
            c.score = max(c.score, score)

        predicates = self._predicates(triplets)
        self._generated_candidates(ctx, gen, triplets, assign, regions, predicates, add)
        self._pair_candidates(ctx, gen, objects, regions, predicates, {(c.subject, c.object) for c in cands.values()},
                              add)
        return cands

    def _generated_candidates(self, ctx: VideoContext, gen: Generation, triplets, assign: dict[int, int],
                              regions: list[int], predicates: list[str], add) -> None:
        """The generated triplets with their step scores, and every other predicate of each
        generated pair teacher-forced in the context the triplet had (scored together)."""
        obj_pos = [i for i, tid in enumerate(gen.token_ids) if tid == self.model.ids.obj]
        requests, alternatives = [], []
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
        scored = self.generator.score_many(ctx, requests, batch_size=self.settings.score_batch_size)
        for (s, o, alts, span), scores in zip(alternatives, scored):
            for p, sc in zip(alts, scores):
                add(s, o, p, [span], sc)

    def _pair_candidates(self, ctx: VideoContext, gen: Generation, objects: list[tuple[str, Tube]],
                         regions: list[int], predicates: list[str], generated: set[tuple[int, int]], add) -> None:
        """Every ordered pair no triplet generated (by descending temporal overlap, at most
        ``max_new_pairs``) with every predicate, as one more triplet after the generated text."""
        presence = [tube.present() for _, tube in objects]
        pairs = [(a, b) for a in range(len(objects)) for b in range(len(objects))
                 if a != b and (a, b) not in generated]
        pairs.sort(key=lambda ab: -int((presence[ab[0]] & presence[ab[1]]).sum()))
        pairs = pairs[: self.settings.max_new_pairs]
        if not (pairs and predicates):
            return
        keys = [(a, b, p) for a, b in pairs for p in predicates]
        conts = [self._triplet_ids(objects[a][0], p, objects[b][0], regions[a] if regions else None)
                 for a, b, p in keys]
        scores = self.generator.score_continuations(ctx, self._after_text(gen), conts,
                                                    batch_size=self.settings.score_batch_size)
        for (a, b, p), sc in zip(keys, scores):
            add(a, b, p, [pair_span(presence[a], presence[b])], sc)
