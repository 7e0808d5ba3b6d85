"""Samples -> training batches: frames on the model's timeline, target text and mask targets.

Frame timeline: a batch is resampled to ``T = min(max frames in batch,
max_frames)`` frames by nearest uniform indices; relation spans are remapped to
that timeline (a span that falls between sampled frames snaps to the nearest
one) and the model's span numbers always refer to it. ``frame_indices`` maps it
back to source frames.

The batch holds the scene-graph *target* only; the prompt before it (with the
object tags written as words) is built by the model at forward time, because
its tags are the model's own predictions from the encoded frames (exactly what
inference sees; in training some are dropped).

Batch keys (:meth:`SceneGraphCollator.__call__`):

* ``target_ids [B, L]`` / ``target_mask [B, L]``: scene-graph text + ``<eos>``, right-padded;
  ``target_loss_mask [B, L]``: 1 where a token is a target (0: a chain step's prompt);
* ``chain [B]`` bool: the sample is written as the chained steps (:mod:`psg4d.model.chain_text`,
  probability ``model.chain_prob``), else in the direct grammar;
* ``rgb [B, T, 3, S, S]`` in [0, 1]; ``depth [B, T, 1, S, S]`` metres, or None if any sample lacks it;
  ``disparity_scale [B]`` each camera's focal length (px) x stereo baseline (m), for encoders whose
  depth input is disparity (:func:`~psg4d.model.encoder.disparity_scale_of`);
* ``mask_targets`` B x ``[N_obj, T, S, S]`` bool, one per ``[Obj]`` occurrence in the target
  (with ``model.supervise_all_objects``, the target ends with ``<eos> ; <category> [Obj]`` for each
  object with a tube that no triplet mentions: context, not learned as text);
  ``object_masks`` B x ``[N_all, T, S, S]`` bool: every object with a tube (SAM2's pretraining, the
  form reader's), ``object_categories`` B x ``[N_all]`` their object_vocab indices (-100 outside it),
  ``intrinsics`` B x ``[3, 3]`` (None: the video has none) for the ``S x S`` frames;
  ``mask_valid`` B x ``[N_obj]`` (False: that object has no tube); ``obj_ids`` B x [N_obj];
  ``obj_categories`` B x ``[N_obj]`` object_vocab index of each ``[Obj]`` (-100 outside it);
* ``tags [B, V_obj]`` multi-hot categories present; ``semantic [B, T, S, S]`` category index
  per pixel (``V_obj`` = unlabelled; None unless ``with_semantic``); ``frame_indices`` B x [T];
* with ``model.time_reversal`` (training), a share of the real clips is played backwards before
  anything else (:mod:`psg4d.data.time_reversal`): frames, tubes and spans reversed, the
  time-asymmetric predicates swapped;
* ``lifted [B]`` bool: a 2D image (``Sample.lifted``) made a pseudo clip. Its frame 0 is the
  image (repeated on every frame: the model only reads frame 0 and imagines the rest), the
  relations that hold in it span the whole clip and each object's mask supervises every frame.
  A batch with lifted samples has ``model.transfer.pseudo_frames`` frames (or the real
  videos' count if larger), at most ``max_frames``; depth is what the real videos have (zeros
  for the images).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from psg4d.data.schema import Relation, Sample, SceneGraph4D, Video4D, merge_spans
from psg4d.data.time_reversal import reversal_table, reverse_sample
from psg4d.errors import ConfigError, DataError
from psg4d.model.config import ModelConfig
from psg4d.model.encoder import disparity_scale_of
from psg4d.data.descriptions import object_description
from psg4d.model.chain_text import format_chain
from psg4d.model.grammar import format_scene_graph
from psg4d.model.prompt import Prompt
from psg4d.model.tokens import OBJ_TOKEN, TRIPLET_SEP

log = logging.getLogger(__name__)


def resample_indices(num_frames: int, target: int) -> np.ndarray:
    """``target`` frame indices spread uniformly over ``[0, num_frames)`` (nearest)."""
    if num_frames == target:
        return np.arange(num_frames)
    return np.rint(np.linspace(0, num_frames - 1, target)).astype(np.int64)


def remap_spans(spans: Sequence[tuple[int, int]], idx: np.ndarray) -> list[tuple[int, int]]:
    """Source-frame spans -> spans over the resampled timeline ``idx`` (source index per new frame)."""
    out = []
    for a, b in spans:
        hit = np.nonzero((idx >= a) & (idx <= b))[0]
        if hit.size == 0:  # the span fell between two sampled frames
            j = int(np.argmin(np.abs(idx - (a + b) / 2)))
            out.append((j, j))
        else:
            out.extend((int(j), int(j)) for j in hit)
    return merge_spans(out)


def resampled_graph(graph: SceneGraph4D, idx: np.ndarray) -> SceneGraph4D:
    """``graph`` with its relation spans on the resampled timeline ``idx`` (objects unchanged)."""
    rels = [Relation(r.subject_id, r.object_id, r.predicate, remap_spans(r.spans, idx)) for r in graph.relations]
    return SceneGraph4D(
        video_id=graph.video_id, num_frames=len(idx), height=graph.height, width=graph.width,
        objects=graph.objects, relations=rels,
    )


def video_tensors(video: Video4D, idx: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Frames ``idx`` of ``video`` -> rgb ``[T, 3, S, S]`` in [0, 1], depth ``[T, 1, S, S]`` metres or None."""
    rgb = torch.from_numpy(np.ascontiguousarray(video.rgb[idx])).permute(0, 3, 1, 2).float() / 255.0
    if rgb.shape[-2:] != (size, size):
        rgb = F.interpolate(rgb, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    depth = None
    if video.depth is not None:
        depth = torch.from_numpy(np.ascontiguousarray(video.depth[idx], dtype=np.float32)).unsqueeze(1)
        if depth.shape[-2:] != (size, size):
            # nearest: averaging would blend metric depths across object edges (and invalid zeros)
            depth = F.interpolate(depth, size=(size, size), mode="nearest")
    return rgb, depth


def frame_intrinsics(video: Video4D, size: int) -> torch.Tensor | None:
    """``video``'s pinhole intrinsics for its frames resized to ``size x size`` (as :func:`video_tensors`
    resizes them) -> ``[3, 3]`` float64, or None for a video without intrinsics."""
    if video.intrinsics is None:
        return None
    k = torch.as_tensor(np.asarray(video.intrinsics), dtype=torch.float64).clone()
    h, w = video.rgb.shape[1:3]
    for row, scale in ((0, size / w), (1, size / h)):  # pixel centres: x' + 0.5 = (x + 0.5) * scale
        k[row, row] *= scale
        k[row, 2] = (k[row, 2] + 0.5) * scale - 0.5
    return k


def tube_target(graph: SceneGraph4D, object_id: int, idx: np.ndarray, size: int) -> torch.Tensor | None:
    """GT tube of ``object_id`` on frames ``idx`` -> bool ``[T, S, S]`` (None if it has no tube)."""
    obj = graph.object_by_id()[object_id]
    if obj.tube is None:
        return None
    masks = np.stack([obj.tube.frame(int(t)) for t in idx])  # [T, H, W] bool
    m = torch.from_numpy(masks).float().unsqueeze(1)
    if m.shape[-2:] != (size, size):
        m = F.interpolate(m, size=(size, size), mode="area" if m.shape[-1] >= size else "nearest")
    return m[:, 0] >= 0.5


def semantic_target(graph: SceneGraph4D, idx: np.ndarray, size: int, vocab_index: dict[str, int]) -> torch.Tensor:
    """Category index per pixel on frames ``idx`` -> long ``[T, S, S]``; ``len(vocab_index)``
    where no object of the vocabulary is (unlabelled, or a category outside the vocabulary)."""
    none = len(vocab_index)
    out = torch.full((len(idx), size, size), none, dtype=torch.long)
    for obj in graph.objects:
        c = vocab_index.get(obj.category)
        if c is None or obj.tube is None:
            continue
        m = torch.from_numpy(np.stack([obj.tube.frame(int(t)) for t in idx])).float().unsqueeze(1)  # [T, 1, H, W]
        if m.shape[-2:] != (size, size):
            m = F.interpolate(m, size=(size, size), mode="nearest")
        out[m[:, 0] >= 0.5] = c
    return out


def lifted_graph(graph: SceneGraph4D) -> SceneGraph4D:
    """An image's scene graph as frame 0 of a clip: the relations that hold at frame 0."""
    rels = [Relation(r.subject_id, r.object_id, r.predicate, [(0, 0)]) for r in graph.relations
            if any(a <= 0 <= b for a, b in r.spans)]
    return SceneGraph4D(video_id=graph.video_id, num_frames=graph.num_frames, height=graph.height,
                        width=graph.width, objects=graph.objects, relations=rels)


def pad_rows(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists -> (ids ``[B, L]``, mask ``[B, L]``)."""
    length = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def per_object_prompts(keep: torch.Tensor, obj_ids: Sequence[int], k: int) -> torch.Tensor:
    """At most ``k`` random valid ``[Obj]`` occurrences (``keep [N]`` bool) of each object (torch
    RNG: resumable): every object keeps a mask prompt, its mentions take turns."""
    order = torch.randperm(keep.numel()).tolist()
    count: dict[int, int] = {}
    out = torch.zeros_like(keep)
    for i in order:
        if bool(keep[i]) and count.get(obj_ids[i], 0) < k:
            count[obj_ids[i]] = count.get(obj_ids[i], 0) + 1
            out[i] = True
    return out


def sample_prompts(keep: torch.Tensor, obj_ids: Sequence[int] | None, k: int) -> torch.Tensor:
    """A random ``k`` of the valid ``[Obj]`` occurrences (``keep [N]`` bool), every distinct object
    before any second mention of one (torch RNG: resumable).

    An object is mentioned once per triplet, so a uniform draw mostly picks the table and the
    hand, which are in most triplets, and rarely the small objects whose masks are hard."""
    chosen = torch.nonzero(keep).flatten()
    chosen = chosen[torch.randperm(chosen.numel()).to(chosen.device)]
    if obj_ids is not None:
        seen: set[int] = set()
        first = []
        for i in chosen.tolist():
            first.append(obj_ids[i] not in seen)
            seen.add(obj_ids[i])
        # stable: first mentions (in random order) ahead of repeats
        order = torch.argsort(torch.tensor([0 if f else 1 for f in first]), stable=True)
        chosen = chosen[order.to(chosen.device)]
    out = torch.zeros_like(keep)
    out[chosen[:k]] = True
    return out


@dataclass(kw_only=True)
class _SampleTensors:
    """One sample's part of a batch (:meth:`SceneGraphCollator._sample_tensors`), on the batch's timeline."""

    tag_indices: list[int]  # object_vocab index of each of its objects' categories in the vocabulary
    rgb: torch.Tensor  # [T, 3, S, S]
    depth: torch.Tensor | None  # [T, 1, S, S]
    target: list[int]  # target ids
    loss_mask: list[int]  # per target id, 1: learned
    chained: bool  # written as the chained steps
    mask_targets: torch.Tensor  # [N_obj, T, S, S] bool
    mask_valid: torch.Tensor  # [N_obj] bool
    object_masks: torch.Tensor  # [N_all, T, S, S] bool
    object_categories: torch.Tensor  # [N_all] long, -100: outside the vocabulary
    intrinsics: torch.Tensor | None  # [3, 3] for the S x S frames
    obj_ids: list[int]  # [N_obj]
    obj_categories: torch.Tensor  # [N_obj] long
    frame_indices: torch.Tensor  # [T] source frame of each batch frame
    semantic: torch.Tensor | None  # [T, S, S] long


class SceneGraphCollator:
    """``collate(samples) -> batch`` for the 4D-LLM (see the module docstring for the keys)."""

    def __init__(self, *, config: ModelConfig, prompt: Prompt, with_semantic: bool):
        self.config = config
        self.prompt = prompt
        self.with_semantic = with_semantic
        self.vocab_index = {c: i for i, c in enumerate(config.object_vocab)}
        self.reversal = None  # predicate -> its name backwards; None: clips are never reversed
        if config.time_reversal > 0:
            try:
                self.reversal = reversal_table(config.time_reversal_table, config.predicate_vocab,
                                               vocabulary=config.predicate_vocab)
            except ValueError as e:
                raise ConfigError(f"model.time_reversal: {e} (set model.time_reversal=0 for this data, or declare its "
                                  "predicates in psg4d.data.time_reversal.REVERSAL_TABLES)") from None

    def __call__(self, samples: list[Sample], *, augment: bool = True) -> dict[str, Any]:
        """``augment``: play clips backwards with probability ``model.time_reversal`` (training)."""
        self._check_samples(samples)
        t, use_depth = self._batch_timeline(samples)
        # one sample after the other: each one's random draws (reversal, then chaining) stay in order
        items = [self._sample_tensors(s, t, use_depth=use_depth, augment=augment) for s in samples]
        return self._stack(samples, items, use_depth=use_depth)

    @staticmethod
    def _check_samples(samples: list[Sample]) -> None:
        """DataError for an empty batch, an invalid video or a graph whose frame count differs from it."""
        if not samples:
            raise DataError(None, "cannot collate an empty list of samples")
        for s in samples:
            s.video.validate(s.video.video_id or s.graph.video_id)
            if s.graph.num_frames != s.video.num_frames:
                raise DataError(
                    s.graph.video_id,
                    f"scene graph has {s.graph.num_frames} frames but the video has {s.video.num_frames}",
                    field="num_frames",
                )

    def _batch_timeline(self, samples: list[Sample]) -> tuple[int, bool]:
        """The batch's frame count ``T`` and whether it carries depth (every real clip has it)."""
        cfg = self.config
        real = [s for s in samples if not s.lifted]
        lengths = [s.video.num_frames for s in real]
        if len(real) < len(samples):
            lengths.append(cfg.transfer.pseudo_frames or cfg.max_frames)
        t = min(max(lengths), cfg.max_frames)
        use_depth = bool(real) and all(s.video.depth is not None for s in real)
        if not use_depth and any(s.video.depth is not None for s in real):
            log.debug("mixed RGB-D and RGB-only samples in one batch: using RGB only")
        return t, use_depth

    def _sample_tensors(self, s: Sample, t: int, *, use_depth: bool, augment: bool) -> _SampleTensors:
        """One sample on the batch's ``t``-frame timeline: frames, target text and mask targets."""
        cfg = self.config
        # torch RNG, drawn only when reversal is on (runs without it keep their stream)
        if augment and self.reversal is not None and not s.lifted and float(torch.rand(())) < cfg.time_reversal:
            s = reverse_sample(s, self.reversal)
        # a lifted image: frame 0 on every frame of the clip, so spans cover the whole clip
        idx = np.zeros(t, dtype=np.int64) if s.lifted else resample_indices(s.video.num_frames, t)
        rgb, depth = video_tensors(s.video, idx, cfg.image_size)
        if use_depth and depth is None:  # an image beside RGB-D videos: its depth is imagined
            depth = torch.zeros(t, 1, cfg.image_size, cfg.image_size)
        graph = resampled_graph(lifted_graph(s.graph) if s.lifted else s.graph, idx)
        target, loss_mask, occurrences, chained = self._target_text(graph, t)
        n_obj = sum(1 for i in target if i == self.prompt.ids.obj)
        if n_obj != len(occurrences):
            raise DataError(
                s.graph.video_id, f"tokenized text has {n_obj} {OBJ_TOKEN} tokens, expected {len(occurrences)}"
            )
        mask_targets, mask_valid = self._mask_targets(s.graph, occurrences, idx)
        with_tube = [o.object_id for o in s.graph.objects if o.tube is not None]
        cats = {o.object_id: o.category for o in s.graph.objects}
        return _SampleTensors(
            tag_indices=[self.vocab_index[o.category] for o in s.graph.objects if o.category in self.vocab_index],
            rgb=rgb,
            depth=depth,
            target=target,
            loss_mask=loss_mask,
            chained=chained,
            mask_targets=mask_targets,
            mask_valid=mask_valid,
            object_masks=self._mask_targets(s.graph, with_tube, idx)[0],
            object_categories=torch.tensor([self.vocab_index.get(cats[i], -100) for i in with_tube], dtype=torch.long),
            intrinsics=frame_intrinsics(s.video, cfg.image_size),
            obj_ids=list(occurrences),
            obj_categories=torch.tensor([self.vocab_index.get(cats[i], -100) for i in occurrences], dtype=torch.long),
            frame_indices=torch.from_numpy(idx),
            semantic=semantic_target(s.graph, idx, cfg.image_size, self.vocab_index) if self.with_semantic else None,
        )

    def _target_text(self, graph: SceneGraph4D, t: int) -> tuple[list[int], list[int], list[int], bool]:
        """Target ids, their loss mask (1: learned), the object id of each ``[Obj]`` and whether the
        sample is written as the chained steps (``model.chain_prob``) rather than the direct grammar."""
        cfg = self.config
        # torch RNG: which samples are chained is resumable like every other draw
        chained = cfg.chain_prob > 0 and float(torch.rand(())) < cfg.chain_prob
        if chained:
            ct = format_chain(graph, describe=object_description)
            target, loss_mask = self.prompt.chain_target_ids(ct.answers, num_frames=t)
            return target, loss_mask, ct.obj_ids, chained
        gt = format_scene_graph(graph, predicates=cfg.predicate_vocab or None)
        target = self.prompt.target_ids(gt.text)
        loss_mask, occurrences = [1] * len(target), list(gt.obj_ids)
        if cfg.supervise_all_objects:
            extra, extra_ids = self._unmentioned_items(graph, occurrences)
            target, loss_mask, occurrences = target + extra, loss_mask + [0] * len(extra), occurrences + extra_ids
        return target, loss_mask, occurrences, chained

    def _stack(self, samples: list[Sample], items: list[_SampleTensors], *, use_depth: bool) -> dict[str, Any]:
        """The batch (keys: the module docstring) from each sample's tensors."""
        cfg = self.config
        tags = torch.zeros(len(samples), len(cfg.object_vocab))  # [B, V_obj]
        for b, it in enumerate(items):
            for c in it.tag_indices:
                tags[b, c] = 1.0
        target_ids, target_mask = pad_rows([it.target for it in items], self.prompt.ids.pad)
        target_loss_mask, _ = pad_rows([it.loss_mask for it in items], 0)
        semantic = [it.semantic for it in items if it.semantic is not None]
        return {
            "target_ids": target_ids,  # [B, L]
            "target_mask": target_mask,  # [B, L]
            "target_loss_mask": target_loss_mask,  # [B, L] 1: a token the LLM learns to write
            "chain": torch.tensor([it.chained for it in items], dtype=torch.bool),  # [B] written as the chained steps
            "rgb": torch.stack([it.rgb for it in items]),  # [B, T, 3, S, S]
            "depth": torch.stack([it.depth for it in items]) if use_depth else None,  # [B, T, 1, S, S]
            "disparity_scale": torch.tensor([disparity_scale_of(s.video, cfg.encoder) for s in samples]),  # [B]
            "mask_targets": [it.mask_targets for it in items],  # B x [N_obj, T, S, S] bool
            "mask_valid": [it.mask_valid for it in items],  # B x [N_obj] bool
            "object_masks": [it.object_masks for it in items],  # B x [N_all, T, S, S] bool
            "object_categories": [it.object_categories for it in items],  # B x [N_all] long (-100: none)
            "intrinsics": [it.intrinsics for it in items],  # B x [3, 3] for the S x S frames, or None
            "obj_ids": [it.obj_ids for it in items],
            "frame_indices": [it.frame_indices for it in items],  # B x [T]
            "tags": tags,  # [B, V_obj]
            "semantic": torch.stack(semantic) if semantic else None,  # [B, T, S, S]
            "obj_categories": [it.obj_categories for it in items],  # B x [N_obj]
            "lifted": torch.tensor([s.lifted for s in samples], dtype=torch.bool),  # [B]
        }

    def _unmentioned_items(self, graph: SceneGraph4D, occurrences: Sequence[int]) -> tuple[list[int], list[int]]:
        """Ids of ``; <category> [Obj]`` for each object with a tube that ``occurrences`` lacks, and
        their object ids (the target's ``<eos>`` comes first: the text the LLM learns ends there)."""
        seen = set(occurrences)
        ids: list[int] = []
        objs: list[int] = []
        for o in graph.objects:
            if o.object_id in seen or o.tube is None:
                continue
            ids += self.prompt.text_ids(f"{TRIPLET_SEP} {o.category} {OBJ_TOKEN}")
            objs.append(o.object_id)
        return ids, objs

    def _mask_targets(self, graph: SceneGraph4D, occurrences: Sequence[int], idx: np.ndarray):
        """``[N_obj, T, S, S]`` bool target per ``[Obj]`` occurrence and ``[N_obj]`` validity."""
        size = self.config.image_size
        tubes: dict[int, torch.Tensor | None] = {}
        for oid in dict.fromkeys(occurrences):
            tubes[oid] = tube_target(graph, oid, idx, size)
        empty = torch.zeros(len(idx), size, size, dtype=torch.bool)
        per_obj = [tubes[oid] for oid in occurrences]
        stacked = (torch.stack([m if m is not None else empty for m in per_obj]) if per_obj
                   else torch.zeros(0, len(idx), size, size, dtype=torch.bool))
        return stacked, torch.tensor([m is not None for m in per_obj], dtype=torch.bool)
