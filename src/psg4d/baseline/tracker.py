"""Online linking of per-frame segments into tubes (PSG4DFormer's tracking step).

Frames are processed in order. Each track keeps the mask of the frame it was last seen in and a
running (exponential moving average) of its segments' query embeddings. For every frame:

1. **Matching.** Every *alive* track (unseen for at most ``max_missing`` frames) is scored against
   every segment: ``iou_weight * IoU(last mask, segment mask) + (1 - iou_weight) * cosine(EMA
   embedding, segment embedding)`` with the cosine clipped to [0, 1]. Pairs of different classes are
   forbidden when ``class_aware``. Hungarian assignment (``scipy.optimize.linear_sum_assignment``)
   on ``1 - similarity`` picks the links; a link is kept only when its similarity reaches
   ``match_threshold``.
2. **Re-entry.** A segment left unmatched is offered to the *ended* tracks (unseen for more than
   ``max_missing`` frames; of the segment's class when ``class_aware``): the pairs whose embedding
   cosine reaches ``reentry_similarity`` are taken best first, one to one, and resume those tracks
   (the mask term is useless after a long absence, so only appearance counts).
3. **Birth.** A segment still unmatched starts a new track when its score reaches ``birth_score``.

At the end, tracks seen in fewer than ``min_length`` frames are dropped and the rest are packed into
:class:`~psg4d.baseline.types.TrackedTubes`, ordered by first frame, then by mean score (highest
first).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from psg4d.data.masks import pairwise_mask_iou

from .config import TrackerConfig
from .types import GEOMETRY_DIM, FrameDetections, TrackedTubes, frame_geometry

__all__ = ["EMBED_MOMENTUM", "Tracker"]

# Weight of a track's past in its running embedding (TrackerConfig has no field for it). High enough
# that one noisy or partly occluded frame does not pull the track's appearance away.
EMBED_MOMENTUM = 0.8

_FORBIDDEN_COST = 1e6  # stands in for +inf: linear_sum_assignment rejects infeasible matrices
_EPS = 1e-8


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; all-zero rows stay zero (cosine 0 with everything)."""
    x = np.asarray(x, np.float64)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, _EPS)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[A, B]`` cosine of rows of ``a`` ``[A, D]`` and ``b`` ``[B, D]``, clipped to [0, 1]."""
    return np.clip(_unit(a) @ _unit(b).T, 0.0, 1.0)


@dataclass
class _Track:
    embed: np.ndarray  # [D] running embedding (EMA of unit-normalised segment embeddings)
    mask: np.ndarray  # [H, W] the mask of the frame it was last seen in
    label: int  # class of its last segment (what class_aware compares against)
    last_seen: int
    # (frame, index of the segment in that frame's FrameDetections), in frame order
    hits: list[tuple[int, int]] = field(default_factory=list)

    def update(self, frame: int, seg: int, det: FrameDetections) -> None:
        self.embed = EMBED_MOMENTUM * self.embed + (1.0 - EMBED_MOMENTUM) * _unit(det.embeds[seg])
        self.mask = det.masks[seg]
        self.label = int(det.labels[seg])
        self.last_seen = frame
        self.hits.append((frame, seg))


class Tracker:
    """Links per-frame segments into tubes online (see the module docstring for the algorithm)."""

    def __init__(self, *, config: TrackerConfig) -> None:
        self.config = config

    def track(self, detections: list[FrameDetections], depth: np.ndarray | None = None) -> TrackedTubes:
        """Tubes of one video from its frames' segments.

        ``depth`` ``[T, H, W]`` in metres at the masks' resolution, or None (geometry's depth column
        is then 0). Raises ``ValueError`` when the frames disagree on ``H, W``, ``C`` or ``D``, or when
        ``depth`` does not have shape ``[T, H, W]``.
        """
        num_frames = len(detections)
        height, width, num_classes, dim = self._dims(detections, depth)
        if depth is not None:
            depth = np.asarray(depth)
            if depth.shape != (num_frames, height, width):
                raise ValueError(f"depth has shape {tuple(depth.shape)}, expected "
                                 f"{(num_frames, height, width)} (frames, height, width of the masks)")
        # local copies with fixed dtypes; the caller's FrameDetections are left untouched
        frames = [FrameDetections(masks=np.asarray(d.masks, bool), labels=np.asarray(d.labels, np.int64),
                                  scores=np.asarray(d.scores, np.float32),
                                  class_probs=np.asarray(d.class_probs, np.float32),
                                  embeds=np.asarray(d.embeds, np.float32)) for d in detections]
        tracks: list[_Track] = []
        for t, det in enumerate(frames):
            self._step(t, det, tracks)
        kept = [tr for tr in tracks if len(tr.hits) >= max(self.config.min_length, 1)]
        return self._pack(kept, frames, depth, num_frames, height, width, num_classes, dim)

    # --- per frame ---------------------------------------------------------------------------------

    def _step(self, t: int, det: FrameDetections, tracks: list[_Track]) -> None:
        cfg = self.config
        num_segs = len(det)
        if num_segs == 0:
            return
        unmatched = np.ones(num_segs, bool)
        alive = [tr for tr in tracks if t - tr.last_seen - 1 <= cfg.max_missing]
        ended = [tr for tr in tracks if t - tr.last_seen - 1 > cfg.max_missing]
        seg_labels = det.labels  # [K]

        if alive:
            iou = pairwise_mask_iou(np.stack([tr.mask for tr in alive]), det.masks)  # [A, K]
            cos = _cosine(np.stack([tr.embed for tr in alive]), det.embeds)  # [A, K]
            sim = cfg.iou_weight * iou + (1.0 - cfg.iou_weight) * cos  # [A, K]
            allowed = sim >= cfg.match_threshold
            if cfg.class_aware:
                allowed &= np.array([tr.label for tr in alive])[:, None] == seg_labels[None, :]
            # Gating before the assignment (not only after) so that a pair that could never be kept
            # does not take a segment away from a track that would have been linked to it.
            cost = np.where(allowed, 1.0 - sim, _FORBIDDEN_COST)
            rows, cols = linear_sum_assignment(cost)
            for r, c in zip(rows, cols):
                if allowed[r, c]:
                    alive[r].update(t, int(c), det)
                    unmatched[c] = False

        if ended and unmatched.any():
            segs = np.flatnonzero(unmatched)
            cos = _cosine(np.stack([tr.embed for tr in ended]), det.embeds[segs])  # [E, U]
            ok = cos >= cfg.reentry_similarity
            if cfg.class_aware:
                ok &= np.array([tr.label for tr in ended])[:, None] == seg_labels[segs][None, :]
            pairs = sorted(zip(*np.nonzero(ok)), key=lambda p: -cos[p[0], p[1]])
            used_tracks: set[int] = set()
            for e, u in pairs:
                s = int(segs[u])
                if e in used_tracks or not unmatched[s]:
                    continue
                ended[e].update(t, s, det)
                used_tracks.add(e)
                unmatched[s] = False

        for s in np.flatnonzero(unmatched):
            if det.scores[s] >= cfg.birth_score:
                # a fresh track's running embedding is its first segment's, not a blend with zeros
                tr = _Track(embed=_unit(det.embeds[s]), mask=det.masks[s], label=int(seg_labels[s]),
                            last_seen=t, hits=[(t, int(s))])
                tracks.append(tr)

    # --- output ------------------------------------------------------------------------------------

    @staticmethod
    def _dims(detections: list[FrameDetections], depth: np.ndarray | None) -> tuple[int, int, int, int]:
        """``(H, W, C, D)`` shared by all frames; with no frames, ``H, W`` from depth (else 0) and C = D = 0."""
        if not detections:
            if depth is not None and np.ndim(depth) == 3:
                return int(np.shape(depth)[1]), int(np.shape(depth)[2]), 0, 0
            return 0, 0, 0, 0
        dims = {(np.shape(d.masks)[1:], np.shape(d.class_probs)[1], np.shape(d.embeds)[1]) for d in detections}
        if len(dims) != 1:
            raise ValueError(f"frames disagree on (mask [H, W], classes C, embedding D): {sorted(dims)}")
        (hw, num_classes, dim), = dims
        return int(hw[0]), int(hw[1]), int(num_classes), int(dim)

    def _pack(self, kept: list[_Track], detections: list[FrameDetections], depth: np.ndarray | None,
              num_frames: int, height: int, width: int, num_classes: int, dim: int) -> TrackedTubes:
        n = len(kept)
        masks = np.zeros((n, num_frames, height, width), bool)  # [N, T, H, W]
        valid = np.zeros((n, num_frames), bool)  # [N, T]
        feats = np.zeros((n, num_frames, dim), np.float32)  # [N, T, D]
        geometry = np.zeros((n, num_frames, GEOMETRY_DIM), np.float32)  # [N, T, G]
        class_probs = np.zeros((n, num_classes), np.float32)  # [N, C]
        labels = np.zeros(n, np.int64)  # [N]
        frame_labels = np.full((n, num_frames), -1, np.int64)  # [N, T]
        scores = np.zeros(n, np.float32)  # [N]
        for i, tr in enumerate(kept):
            seg_scores = []
            for t, s in tr.hits:
                det = detections[t]
                mask = det.masks[s]  # [H, W]
                masks[i, t] = mask
                valid[i, t] = True
                feats[i, t] = det.embeds[s]
                geometry[i, t] = frame_geometry(mask, None if depth is None else depth[t])
                class_probs[i] += det.class_probs[s]
                frame_labels[i, t] = int(det.labels[s])
                seg_scores.append(float(det.scores[s]))
            w = np.asarray(seg_scores, np.float64)
            fl = frame_labels[i, valid[i]]
            class_probs[i] /= len(tr.hits)
            scores[i] = w.mean()
            # score-weighted vote; a tube whose scores are all 0 falls back to a plain count
            votes = np.bincount(fl, weights=w if w.sum() > 0 else None)
            labels[i] = int(np.argmax(votes))
        # first frame ascending, then mean score descending (stable, so ties keep birth order)
        first = [tr.hits[0][0] for tr in kept]
        order = sorted(range(n), key=lambda i: (first[i], -float(scores[i])))
        idx = np.asarray(order, np.int64)
        return TrackedTubes(masks=masks[idx], valid=valid[idx], feats=feats[idx], geometry=geometry[idx],
                            class_probs=class_probs[idx], labels=labels[idx], frame_labels=frame_labels[idx],
                            scores=scores[idx])
