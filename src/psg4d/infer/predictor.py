"""From a video to a ranked 4D scene graph with a trained :class:`PSG4DModel`.

Steps of :meth:`Predictor.predict`:

1. Encode the video (at most ``max_frames`` model frames, resampled uniformly)
   and decode greedily. Every generated ``[Obj]`` token's hidden state prompts
   the mask decoder; its tube is thresholded (logit > ``mask_threshold``) after
   upsampling to the video size. A source frame takes the mask of the nearest
   model frame, and a model-frame span ``[a, b]`` covers every source frame
   whose nearest model frame lies in ``[a, b]``.
2. Objects: the ``[Obj]`` occurrences of the parsed triplets are grouped
   greedily in order: an occurrence joins an earlier object of the same
   category (case-insensitive) whose tube has vIoU >= ``merge_viou`` with it
   (two empty tubes count as equal); otherwise it starts a new object. An
   object keeps the tube of its first occurrence; its score is that tube's mean
   predicted IoU. (1b) With ``model.tag_words``, every tagged category that no
   generated triplet mentions becomes an object too: its tube comes from the
   ``[Obj]`` hidden state of ``<tag> [Obj]`` teacher-forced after the generated
   text (``tag_objects``), so an object the greedy text skipped can still take
   part in the pairings of step 3.
3. Ranked relations. A candidate's score is the log-probability, under the LLM
   and given the video, of its text ``subject [Obj] predicate object [Obj]``
   (span numbers excluded: they locate a relation, they do not decide whether
   it holds), summed over its tokens:

   * generated triplets: the greedy step log-probabilities of those tokens;
   * alternative predicates of each generated pair: the same text with every
     other predicate of the vocabulary, teacher-forced at the generated
     triplet's position (same preceding tokens), keeping the generated span;
   * other pairings: every ordered pair of detected objects that was not
     generated, with every predicate, teacher-forced as one more triplet after
     the generated text (``... ;``); its span is the frames where both tubes are
     present (else where either is, else the whole video). Pairs are taken by
     descending temporal overlap, at most ``max_new_pairs``.

   Candidates with the same (subject, object, predicate) are merged (spans
   united, best score kept); the list is sorted by descending score and cut at
   ``max_candidates``. Log-probabilities of different lengths are compared as
   they are: longer names cost more, the same for every candidate of a pair.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from psg4d.data.schema import MaskTube, ObjectTrack, Relation, SceneGraph4D, Video4D, merge_spans
from psg4d.model.grammar import clean_phrase, parse_scene_graph
from psg4d.model.mask_decoder import upsample_to
from psg4d.model.psg4d_llm import Generation, PSG4DModel
from psg4d.model.tokens import OBJ_TOKEN, TRIPLET_SEP

log = logging.getLogger(__name__)


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


@dataclass
class _Candidate:
    subject: int  # index into the merged objects
    object: int
    predicate: str
    spans: list[tuple[int, int]] = field(default_factory=list)  # model-frame spans
    score: float = float("-inf")


def tube_viou(a: np.ndarray, b: np.ndarray) -> float:
    """Volume IoU of two bool tubes ``[T, H, W]``; two empty tubes -> 1."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


class Predictor:
    """Wraps a trained :class:`PSG4DModel`; see the module docstring."""

    def __init__(self, *, model: PSG4DModel, config: PredictorConfig | None = None):
        self.model = model.eval()
        self.config = config or PredictorConfig()
        tok = model.tokenizer
        spellings = (model.text_ids(TRIPLET_SEP), tok.encode(TRIPLET_SEP, add_special_tokens=False))
        self._sep_ids = {ids[0] for ids in spellings if len(ids) == 1}

    # ----------------------------------------------------------------- masks
    def _tubes(self, gen: Generation, video: Video4D, owner: np.ndarray) -> tuple[list[np.ndarray], list[float]]:
        """Bool tube ``[T_video, H, W]`` and mean predicted IoU per generated ``[Obj]``."""
        if gen.obj_hidden.shape[0] == 0:
            return [], []
        logits, iou = self.model.decode_masks(gen.context, gen.obj_hidden)  # [N, T_m, h, w], [N, T_m]
        tubes, scores = [], []
        for k in range(logits.shape[0]):
            up = upsample_to(logits[k], (video.height, video.width))  # [T_m, H, W]
            masks = (up > self.config.mask_threshold).cpu().numpy()
            tubes.append(masks[owner])  # [T_video, H, W]
            scores.append(float(iou[k].float().mean()))
        return tubes, scores

    # --------------------------------------------------------------- objects
    def _merge_objects(self, occurrences: dict[int, str], tubes: list[np.ndarray], ious: list[float]):
        """``[Obj]`` index -> merged object index; plus the objects' (category, tube, score)."""
        objects: list[tuple[str, np.ndarray, float]] = []
        assign: dict[int, int] = {}
        for k in sorted(occurrences):
            cat = occurrences[k]
            for j, (ocat, otube, _) in enumerate(objects):
                if ocat.lower() == cat.lower() and tube_viou(otube, tubes[k]) >= self.config.merge_viou:
                    assign[k] = j
                    break
            else:
                assign[k] = len(objects)
                objects.append((cat, tubes[k], ious[k]))
        return assign, objects

    # ------------------------------------------------------------ candidates
    def _triplet_ids(self, subj: str, pred: str, obj: str) -> list[int]:
        return self.model.text_ids(f"{subj} {OBJ_TOKEN} {pred} {obj} {OBJ_TOKEN}")

    def _start_of(self, tokens: list[int], obj_pos: int) -> int:
        """First token of the triplet whose subject [Obj] is at ``obj_pos``: after the last separator."""
        for p in range(obj_pos - 1, -1, -1):
            if tokens[p] in self._sep_ids:
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

    def predict(self, video: Video4D) -> SceneGraph4D:
        model, cfg = self.model, self.config
        video.validate(video.video_id or "video")
        ctx = model.encode_video(video)
        gen = model.generate(ctx, max_new_tokens=cfg.max_new_tokens)
        parsed = parse_scene_graph(
            gen.text, predicates=model.config.predicate_vocab or None, num_frames=ctx.num_frames
        )
        model_idx = model.model_frames(video)  # [T_m] position of each model frame in the video
        owner = np.abs(np.arange(video.num_frames)[:, None] - model_idx[None, :]).argmin(axis=1)  # [T_video]
        tubes, ious = self._tubes(gen, video, owner)
        n_tok = len(tubes)
        triplets = [t for t in parsed.triplets if t.subject_obj_index < n_tok and t.object_obj_index < n_tok]
        occurrences: dict[int, str] = {}
        for t in triplets:
            occurrences.setdefault(t.subject_obj_index, t.subject)
            occurrences.setdefault(t.object_obj_index, t.object)
        assign, objects = self._merge_objects(occurrences, tubes, ious)
        if cfg.tag_objects and ctx.tags:
            objects += self._tag_objects(ctx, gen, objects, video, owner)

        obj_pos = [i for i, tid in enumerate(gen.token_ids) if tid == model.ids.obj]
        predicates = self._predicates(triplets)
        cands: dict[tuple[int, int, str], _Candidate] = {}

        def add(s: int, o: int, p: str, spans: list[tuple[int, int]], score: float) -> None:
            c = cands.setdefault((s, o, p.lower()), _Candidate(s, o, p))
            c.spans = merge_spans(c.spans + spans)
            c.score = max(c.score, score)

        for t in triplets:
            s, o = assign[t.subject_obj_index], assign[t.object_obj_index]
            start = self._start_of(gen.token_ids, obj_pos[t.subject_obj_index])
            end = obj_pos[t.object_obj_index]
            add(s, o, t.predicate, [(t.start, t.end)], float(sum(gen.step_logprobs[start : end + 1])))
            alts = [p for p in predicates if p.lower() != t.predicate.lower()]
            if alts:
                conts = [self._triplet_ids(t.subject, p, t.object) for p in alts]
                scores = model.score_continuations(ctx, gen.token_ids[:start], conts, batch_size=cfg.score_batch_size)
                for p, sc in zip(alts, scores):
                    add(s, o, p, [(t.start, t.end)], sc)

        generated_pairs = {(c.subject, c.object) for c in cands.values()}
        presence = [np.array([tube[model_idx[j]].any() for j in range(len(model_idx))]) for _, tube, _ in objects]
        pairs = [(a, b) for a in range(len(objects)) for b in range(len(objects))
                 if a != b and (a, b) not in generated_pairs]
        pairs.sort(key=lambda ab: -int((presence[ab[0]] & presence[ab[1]]).sum()))
        pairs = pairs[: cfg.max_new_pairs]
        if pairs and predicates:
            context = [i for i in gen.token_ids if i != model.ids.eos]
            if context:
                context = context + model.text_ids(TRIPLET_SEP)
            keys, conts = [], []
            for a, b in pairs:
                for p in predicates:
                    keys.append((a, b, p))
                    conts.append(self._triplet_ids(objects[a][0], p, objects[b][0]))
            scores = model.score_continuations(ctx, context, conts, batch_size=cfg.score_batch_size)
            for (a, b, p), sc in zip(keys, scores):
                add(a, b, p, [self._pair_span(presence[a], presence[b])], sc)

        ranked = sorted(cands.values(), key=lambda c: -c.score)[: cfg.max_candidates]
        return self._scene_graph(video, gen, parsed.dropped, objects, ranked, owner)

    def _tag_objects(self, ctx, gen: Generation, objects, video: Video4D, owner: np.ndarray):
        """(category, tube, score) for each tag no generated object has (step 1b of the module docstring)."""
        model = self.model
        named = {cat.lower() for cat, _, _ in objects}
        missing = [t for t in ctx.tags if t.lower() not in named]
        if not missing:
            return []
        context = [i for i in gen.token_ids if i != model.ids.eos]
        if context:
            context = context + model.text_ids(TRIPLET_SEP)
        hidden = model.obj_hidden_after(ctx, context, missing, batch_size=self.config.score_batch_size)
        logits, iou = model.decode_masks(ctx, hidden)  # [N, T_m, h, w], [N, T_m]
        out = []
        for k, tag in enumerate(missing):
            up = upsample_to(logits[k], (video.height, video.width))
            out.append((tag, (up > self.config.mask_threshold).cpu().numpy()[owner], float(iou[k].float().mean())))
        return out

    @staticmethod
    def _pair_span(pa: np.ndarray, pb: np.ndarray) -> tuple[int, int]:
        for frames in (pa & pb, pa | pb):
            hit = np.nonzero(frames)[0]
            if hit.size:
                return int(hit[0]), int(hit[-1])
        return 0, len(pa) - 1

    def _scene_graph(self, video, gen, dropped, objects, ranked, owner) -> SceneGraph4D:
        tracks = [
            ObjectTrack(object_id=i, category=cat, tube=MaskTube.from_dense(tube), score=score)
            for i, (cat, tube, score) in enumerate(objects)
        ]
        relations = []
        for c in ranked:
            spans = []
            for a, b in c.spans:
                covered = np.nonzero((owner >= a) & (owner <= b))[0]
                if covered.size:
                    spans.append((int(covered[0]), int(covered[-1])))
            if spans:
                relations.append(Relation(c.subject, c.object, c.predicate, merge_spans(spans), score=c.score))
        cfg = self.model.config
        return SceneGraph4D(
            video_id=video.video_id,
            num_frames=video.num_frames,
            height=video.height,
            width=video.width,
            objects=tracks,
            relations=relations,
            object_vocab=list(cfg.object_vocab) or None,
            predicate_vocab=list(cfg.predicate_vocab) or None,
            meta={"generated_text": gen.text, "dropped_triplets": dropped, "num_generated_tokens": len(gen.token_ids),
                  **({"tags": list(gen.context.tags)} if gen.context.tags is not None else {})},
        )


def predict_split(
    ckpt_dir: str | Path, data_path: str | Path, split: str, *, limit: int | None = None,
    config: PredictorConfig | None = None, progress: bool = False,
) -> Iterator[SceneGraph4D]:
    """Predict every video of ``split`` of the dataset at ``data_path`` (lazily, one at a time;
    ``progress``: a tqdm bar)."""
    from tqdm import tqdm

    from psg4d.data.readers import open_dataset

    predictor = Predictor(model=PSG4DModel.from_pretrained(ckpt_dir), config=config)
    reader = open_dataset(data_path)
    ids = reader.video_ids(split)
    for vid in tqdm(ids if limit is None else ids[:limit], desc="predict", unit="video", disable=not progress):
        yield predictor.predict(reader.read_video(vid))
