"""The contracts between the pipeline's stages: a frame's segments, and the tubes they make.

Both hold numpy arrays (not tensors) so that they can be cached on disk (``.npz``) between stages.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class FrameDetections:
    """One frame's panoptic segments (non-overlapping) from the segmenter, best first.

    ``masks`` ``[K, H, W]`` bool; ``labels`` ``[K]`` int class index (into the segmenter's class
    names); ``scores`` ``[K]`` float in [0, 1]; ``class_probs`` ``[K, C]`` (no "no object" column,
    rows need not sum to 1); ``embeds`` ``[K, D]`` float32, the query's decoder output (the
    tracker's appearance cue and the relation model's per-frame object feature).
    """

    masks: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    class_probs: np.ndarray
    embeds: np.ndarray

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @classmethod
    def empty(cls, height: int, width: int, num_classes: int, dim: int) -> "FrameDetections":
        return cls(masks=np.zeros((0, height, width), bool), labels=np.zeros(0, np.int64),
                   scores=np.zeros(0, np.float32), class_probs=np.zeros((0, num_classes), np.float32),
                   embeds=np.zeros((0, dim), np.float32))


@dataclass
class TrackedTubes:
    """A video's tubes: the tracker's output and the relation model's input.

    ``masks`` ``[N, T, H, W]`` bool; ``valid`` ``[N, T]`` bool (the tube has a segment in that frame);
    ``feats`` ``[N, T, D]`` float32 (the segment's query embedding; zeros where not valid);
    ``geometry`` ``[N, T, G]`` float32 (per-frame box x0, y0, x1, y1 and area as fractions of the
    frame, and mean depth in metres, 0 without depth; zeros where not valid; G = :data:`GEOMETRY_DIM`);
    ``class_probs`` ``[N, C]`` (mean over valid frames); ``labels`` ``[N]`` (score-weighted majority
    class); ``frame_labels`` ``[N, T]`` (-1 where not valid); ``scores`` ``[N]`` (mean segment score).
    """

    masks: np.ndarray
    valid: np.ndarray
    feats: np.ndarray
    geometry: np.ndarray
    class_probs: np.ndarray
    labels: np.ndarray
    frame_labels: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return int(self.valid.shape[0])

    @property
    def num_frames(self) -> int:
        return int(self.valid.shape[1])

    def save(self, path) -> None:
        """``.npz`` (masks bit-packed); written by the caller through an atomic path."""
        np.savez_compressed(path, masks=np.packbits(self.masks, axis=-1), shape=np.array(self.masks.shape),
                            valid=self.valid, feats=self.feats, geometry=self.geometry,
                            class_probs=self.class_probs, labels=self.labels, frame_labels=self.frame_labels,
                            scores=self.scores)

    @classmethod
    def load(cls, path) -> "TrackedTubes":
        with np.load(path) as z:
            shape = tuple(int(s) for s in z["shape"])
            masks = np.unpackbits(z["masks"], axis=-1, count=shape[-1]).astype(bool).reshape(shape)
            return cls(masks=masks, valid=z["valid"], feats=z["feats"], geometry=z["geometry"],
                       class_probs=z["class_probs"], labels=z["labels"], frame_labels=z["frame_labels"],
                       scores=z["scores"])


GEOMETRY_DIM = 6  # x0, y0, x1, y1, area, mean depth


def frame_geometry(mask: np.ndarray, depth: np.ndarray | None) -> np.ndarray:
    """``[GEOMETRY_DIM]`` of one bool mask ``[H, W]`` (see :class:`TrackedTubes`); zeros when empty."""
    out = np.zeros(GEOMETRY_DIM, np.float32)
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return out
    h, w = mask.shape
    out[:5] = (xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h, ys.size / (h * w))
    if depth is not None:
        d = depth[mask]
        d = d[np.isfinite(d) & (d > 0)]
        out[5] = float(d.mean()) if d.size else 0.0
    return out
