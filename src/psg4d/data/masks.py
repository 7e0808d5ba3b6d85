"""Binary masks as COCO run-length encodings, and the volume IoU of two mask tubes.

A schema RLE is pycocotools' dict ``{"size": [H, W], "counts": str}`` (``counts``
as str so that it is JSON-safe; an uncompressed COCO list is accepted too). A
tube is one mask per frame; a frame where the object is absent is ``None``.

vIoU comes in one function per representation, with the same semantics:
:func:`dense_tube_viou` for bool arrays ``[T, H, W]`` and :func:`rle_tube_viou`
for per-frame RLEs, computed on run lengths without decoding to pixels.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from pycocotools import mask as mask_utils

# pycocotools' area() sizes a scratch array with a uint8 holding the list length, which
# overflows under numpy 2 for more than 255 masks: call it in chunks that fit
_AREA_CHUNK = 255


def coco_rle(rle: dict) -> dict:
    """A schema RLE (``counts`` as str, or an uncompressed list) in the form pycocotools takes."""
    counts = rle["counts"]
    h, w = (int(v) for v in rle["size"])
    if isinstance(counts, list):  # uncompressed RLE (COCO allows it)
        return mask_utils.frPyObjects(rle, h, w)
    return {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def rle_encode(mask: np.ndarray) -> dict:
    """Binary ``[H, W]`` mask -> schema RLE."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8, copy=False)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def rle_encode_batch(masks: np.ndarray) -> list[dict]:
    """``[T, H, W]`` binary masks -> list of T schema RLEs (one pycocotools call)."""
    if masks.shape[0] == 0:
        return []
    arr = np.asfortranarray(np.moveaxis(masks.astype(np.uint8, copy=False), 0, -1))  # [H, W, T]
    rles = mask_utils.encode(arr)
    for r in rles:
        r["counts"] = r["counts"].decode("ascii")
    return list(rles)


def rle_decode(rle: dict) -> np.ndarray:
    """Schema RLE -> bool ``[H, W]``."""
    return mask_utils.decode(coco_rle(rle)).astype(bool)


def rle_area(rle: dict) -> int:
    return int(mask_utils.area(coco_rle(rle)))


def rle_areas(rles: Sequence[dict]) -> np.ndarray:
    """int64 ``[N]`` areas of N pycocotools RLEs (as :func:`coco_rle` returns them)."""
    out = np.zeros(len(rles), dtype=np.int64)
    for a in range(0, len(rles), _AREA_CHUNK):
        out[a : a + _AREA_CHUNK] = mask_utils.area(list(rles[a : a + _AREA_CHUNK]))
    return out


def _weighted_ratio(inter: np.ndarray, union: np.ndarray, weights: Sequence[float] | np.ndarray | None) -> float:
    """``sum_t w_t inter_t / sum_t w_t union_t`` over ``[T]`` counts; 1.0 when the union is empty."""
    if weights is None:
        total_inter, total_union = inter.sum(), union.sum()
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != inter.shape:
            raise ValueError(f"weights must be [T] = {inter.shape}, got shape {w.shape}")
        if (w < 0).any():
            raise ValueError("weights must be non-negative")
        total_inter, total_union = (w * inter).sum(), (w * union).sum()
    return 1.0 if total_union == 0 else float(total_inter / total_union)


def dense_tube_viou(a: np.ndarray, b: np.ndarray, weights: Sequence[float] | np.ndarray | None = None) -> float:
    """Volume IoU of two bool tubes ``[T, H, W]``.

    ``weights`` ``[T]`` (non-negative) counts frame t ``weights[t]`` times, e.g.
    a model frame standing for several video frames. Two empty tubes give 1.0:
    they agree exactly.
    """
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"tubes must both be [T, H, W], got shapes {a.shape} and {b.shape}")
    inter = np.logical_and(a, b).sum(axis=(1, 2))  # [T]
    union = np.logical_or(a, b).sum(axis=(1, 2))  # [T]
    return _weighted_ratio(inter, union, weights)


def rle_tube_viou(
    a: Sequence[dict | None], b: Sequence[dict | None], weights: Sequence[float] | np.ndarray | None = None
) -> float:
    """:func:`dense_tube_viou` of two tubes given as T per-frame schema RLEs (``None``: absent).

    Areas and intersections are computed on run lengths (pycocotools ``area``
    and ``merge``), so the cost follows the RLE lengths, not ``T*H*W``.
    """
    if len(a) != len(b):
        raise ValueError(f"tubes must have the same number of frames, got {len(a)} and {len(b)}")
    coco_a, area_a = _coco_frames(a)
    coco_b, area_b = _coco_frames(b)
    paired = [t for t in range(len(a)) if coco_a[t] is not None and coco_b[t] is not None]
    for t in paired:
        if coco_a[t]["size"] != coco_b[t]["size"]:
            raise ValueError(f"frame {t}: mask sizes {coco_a[t]['size']} and {coco_b[t]['size']} differ")
    both = [t for t in paired if area_a[t] > 0 and area_b[t] > 0]
    inter = np.zeros(len(a), dtype=np.int64)  # [T]
    inter[both] = rle_areas([mask_utils.merge([coco_a[t], coco_b[t]], intersect=True) for t in both])
    return _weighted_ratio(inter, area_a + area_b - inter, weights)


def _coco_frames(rles: Sequence[dict | None]) -> tuple[list[dict | None], np.ndarray]:
    """Per-frame pycocotools RLEs and their int64 ``[T]`` areas (0 where absent)."""
    coco = [None if r is None else coco_rle(r) for r in rles]
    present = [t for t, r in enumerate(coco) if r is not None]
    areas = np.zeros(len(coco), dtype=np.int64)
    areas[present] = rle_areas([coco[t] for t in present])
    return coco, areas
