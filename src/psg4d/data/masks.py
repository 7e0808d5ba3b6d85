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


# A run is stored in 5-bit groups; 7 groups (35 bits) hold any difference of two run lengths of a
# mask up to 2^34 pixels, and keep every partial sum far from int64 overflow.
_MAX_GROUPS = 7


def rle_run_lengths(counts: str | bytes) -> np.ndarray:
    """The int64 run lengths of a compressed COCO ``counts`` string (pycocotools' ``rleFrString``,
    vectorised).

    Raises ValueError on a character outside the code range, a run longer than any mask needs or a
    truncated last run, which the C decoder would read past the end of the string.
    """
    data = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    c = np.frombuffer(data, dtype=np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return np.zeros(0, dtype=np.int64)
    if ((c < 0) | (c >= 64)).any():
        bad = data[int(np.flatnonzero((c < 0) | (c >= 64))[0])]
        raise ValueError(f"character {chr(bad)!r} is not COCO RLE code")
    more = (c & 0x20) != 0
    if more[-1]:
        raise ValueError("the last run is cut off")
    ends = np.flatnonzero(~more)
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if (lengths > _MAX_GROUPS).any():
        raise ValueError("a run length is out of range")
    k = np.arange(c.size) - np.repeat(starts, lengths)
    x = np.add.reduceat((c & 0x1F) << (5 * k), starts)
    negative = (c[ends] & 0x10) != 0
    x[negative] -= np.left_shift(1, 5 * lengths[negative])
    # runs from the third on are stored as the difference to the run two before
    x[1::2] = np.cumsum(x[1::2])
    x[2::2] = np.cumsum(x[2::2])
    return x


def rle_problem(rle: object, height: int | None = None, width: int | None = None) -> str | None:
    """Why ``rle`` is not a valid schema RLE of an ``height`` x ``width`` mask (None: it is).

    Checked: a dict with ``size`` [H, W] and ``counts`` (str, or an uncompressed list of ints),
    run lengths non-negative and summing to H*W. pycocotools trusts all of this: a bad run
    length makes it loop for ever or read past its buffers.
    """
    if not isinstance(rle, dict):
        return f"mask must be an RLE object, got {type(rle).__name__}"
    size, counts = rle.get("size"), rle.get("counts")
    if (
        not isinstance(size, (list, tuple)) or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in size)
    ):  # fmt: skip
        return f"RLE 'size' must be [H, W] (non-negative integers), got {size!r}"
    h, w = size
    if height is not None and width is not None and (h, w) != (height, width):
        return f"mask size {h}x{w} does not match the video's {height}x{width}"
    if counts is None:
        return "RLE has no 'counts'"
    if isinstance(counts, list):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in counts):
            return "RLE 'counts' list must hold integers"
        runs = np.asarray(counts, dtype=object if any(abs(v) > 2**62 for v in counts) else np.int64)
    elif isinstance(counts, str):
        try:
            runs = rle_run_lengths(counts)
        except (ValueError, UnicodeEncodeError) as e:
            return f"RLE 'counts' is not a COCO RLE string: {e}"
    else:
        return f"RLE 'counts' must be a string or a list, got {type(counts).__name__}"
    if (runs < 0).any():
        return "RLE has a negative run length"
    total = int(runs.sum())
    if total != h * w:
        return f"RLE run lengths sum to {total}, not H*W = {h * w}"
    return None


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
