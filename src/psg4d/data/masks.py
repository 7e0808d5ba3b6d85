"""Binary masks as COCO run-length encodings, and the IoU of masks and of mask tubes.

A schema RLE is pycocotools' dict ``{"size": [H, W], "counts": str}`` (``counts``
as str so that it is JSON-safe; an uncompressed COCO list is accepted too). A
tube is one mask per frame; a frame where the object is absent is ``None``.

Mask IoU lives here, once, for every layer above (``model``, ``infer``,
``baseline``, ``eval``), one function per form:

* :func:`iou_from_counts`: ``inter / union`` from pixel counts already summed (e.g.
  over frames, or read off pycocotools' overlaps); every function below ends in it.
* :func:`mask_iou`: IoU of two masks (or broadcast batches of masks) over their last
  ``dims`` dimensions: a frame (``dims=2``), a whole tube (``dims=3``, the volume
  IoU), frame-membership masks (``dims=1``, temporal IoU).
* :func:`pairwise_mask_iou`: every mask of one set against every mask of another
  (``[A, ...]`` x ``[B, ...]`` -> ``[A, B, ...]``) by matrix products.
* :func:`dense_tube_viou` (bool ``[T, H, W]``) and :func:`rle_tube_viou`
  (per-frame RLEs, computed on run lengths without decoding to pixels): the
  volume IoU of two tubes with per-frame weights.

The first three take numpy arrays or torch tensors (torch is never imported here:
a tensor argument gets a tensor back).

**Empty masks.** IoU is undefined when the union is empty (both masks empty). The
convention everywhere is ``empty=0.0``: such a pair scores 0. It is the one the
metrics need (:mod:`psg4d.eval`: OpenPVSG's ``calculate_mask_iou`` returns 0 on an
empty union, and an empty pair must never count as a hit for recall). A caller for
whom two empty masks agree exactly passes ``empty=1.0`` (the mask decoder's IoU-head
target, where predicting nothing for an absent object is a perfect answer; the
predictor's merge of two ``[Obj]`` occurrences whose tubes are both empty). A
mask that is empty against a non-empty one scores 0 under either convention.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

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


def _torch_of(*xs: Any) -> Any:
    """The torch module when one of ``xs`` is a tensor, else None (torch is not imported for numpy input)."""
    torch = sys.modules.get("torch")
    if torch is not None and any(isinstance(x, torch.Tensor) for x in xs):
        return torch
    return None


def iou_from_counts(inter: Any, union: Any, *, empty: float = 0.0) -> Any:
    """``inter / union`` elementwise (numpy arrays or scalars, or torch tensors), ``empty`` where
    ``union == 0`` (both masks empty; see the module docstring: 0 for metrics, 1.0 where two
    empty masks are meant to agree exactly).

    Counts may be weighted (non-integer); the ratio keeps the dtype ``inter / union`` has
    (float32 counts give float32). numpy input gives an ndarray (0-d for scalars).
    """
    torch = _torch_of(inter, union)
    if torch is not None:
        inter, union = torch.as_tensor(inter), torch.as_tensor(union)
        some = union > 0
        ratio = inter / torch.where(some, union, torch.ones_like(union))
        return torch.where(some, ratio, torch.full_like(ratio, empty))
    inter, union = np.asarray(inter), np.asarray(union)
    some = union > 0
    ratio = inter / np.where(some, union, 1)
    return np.where(some, ratio, np.asarray(empty, dtype=ratio.dtype))


def _overlap_counts(a: Any, b: Any, dims: int) -> tuple[Any, Any]:
    """Intersection and union pixel counts of masks ``a``, ``b`` (broadcast) over their last ``dims`` dims."""
    if dims < 1:
        raise ValueError(f"dims must be >= 1, got {dims}")
    torch = _torch_of(a, b)
    if torch is not None:
        a, b = torch.as_tensor(a), torch.as_tensor(b)
        axes = tuple(range(-dims, 0))
        return torch.logical_and(a, b).sum(dim=axes), torch.logical_or(a, b).sum(dim=axes)
    a, b = np.asarray(a), np.asarray(b)
    axes = tuple(range(-dims, 0))
    return np.logical_and(a, b).sum(axis=axes), np.logical_or(a, b).sum(axis=axes)


def mask_iou(a: Any, b: Any, *, dims: int = 2, empty: float = 0.0) -> Any:
    """IoU of binary masks ``a`` and ``b`` over their last ``dims`` dimensions; leading
    dimensions broadcast (``[..., H, W]`` x ``[..., H, W]`` -> ``[...]`` with ``dims=2``).

    Masks are bool, or any dtype where non-zero is inside; numpy arrays or torch tensors
    (a tensor gives a float32 tensor, on its device; numpy gives a float64 ndarray).
    ``dims=3`` on ``[T, H, W]`` tubes is the volume IoU (intersections and unions summed
    over frames, then divided). Both masks empty (empty union): ``empty``, 0 by default.
    """
    inter, union = _overlap_counts(a, b, dims)
    if _torch_of(inter) is not None:
        inter, union = inter.float(), union.float()
    return iou_from_counts(inter, union, empty=empty)


# float32 sums of 0/1 values are exact below 2^24; larger masks are counted in float64
_FLOAT32_EXACT = 2**24


def pairwise_mask_iou(a: Any, b: Any, *, dims: int = 2, empty: float = 0.0) -> Any:
    """IoU of every mask of ``a`` ``[A, *F, *P]`` with every mask of ``b`` ``[B, *F, *P]``,
    over the last ``dims`` dimensions ``P`` (the pixels), frame by frame along the shared
    dimensions ``F`` -> ``[A, B, *F]``.

    ``[A, H, W]`` x ``[B, H, W]`` -> ``[A, B]``; ``[N, T, H, W]`` x ``[K, T, H, W]`` ->
    ``[N, K, T]`` (per-frame IoU); ``[N, T, H, W]`` with ``dims=3`` -> ``[N, K]`` (volume IoU).
    Counts are matrix products of the masks as float32 (float64 when a mask has 2^24 pixels or
    more, so counts stay exact), one ``[A, B]`` product per frame of ``F``; the result has that
    dtype. numpy arrays or torch tensors, as :func:`mask_iou`. Empty union: ``empty``, 0 by default.
    """
    if dims < 1:
        raise ValueError(f"dims must be >= 1, got {dims}")
    if a.ndim < dims + 1 or tuple(a.shape[1:]) != tuple(b.shape[1:]):
        raise ValueError(f"masks must be [A, *F, *P] and [B, *F, *P] with {dims} pixel dims, "
                         f"got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    frames = tuple(a.shape[1 : a.ndim - dims])
    n_f = int(np.prod(frames, dtype=np.int64))
    n_p = int(np.prod(a.shape[a.ndim - dims :], dtype=np.int64))
    torch = _torch_of(a, b)
    if torch is not None:
        dtype = torch.float32 if n_p < _FLOAT32_EXACT else torch.float64
        fa = torch.as_tensor(a).reshape(a.shape[0], n_f, n_p).to(dtype).transpose(0, 1)  # [F, A, P]
        fb = torch.as_tensor(b).reshape(b.shape[0], n_f, n_p).to(dtype).transpose(0, 1)  # [F, B, P]
        inter = (fa @ fb.transpose(1, 2)).permute(1, 2, 0)  # [A, B, F]
        area_a, area_b = fa.sum(-1).T, fb.sum(-1).T  # [A, F], [B, F]
    else:
        dtype = np.float32 if n_p < _FLOAT32_EXACT else np.float64
        fa = np.asarray(a).reshape(a.shape[0], n_f, n_p).transpose(1, 0, 2).astype(dtype, order="C")  # [F, A, P]
        fb = np.asarray(b).reshape(b.shape[0], n_f, n_p).transpose(1, 0, 2).astype(dtype, order="C")  # [F, B, P]
        inter = np.matmul(fa, fb.transpose(0, 2, 1)).transpose(1, 2, 0)  # [A, B, F]
        area_a, area_b = fa.sum(-1).T, fb.sum(-1).T  # [A, F], [B, F]
    union = area_a[:, None] + area_b[None, :] - inter  # [A, B, F]
    out = iou_from_counts(inter, union, empty=empty)
    return out.reshape(a.shape[0], b.shape[0], *frames)


def _weighted_ratio(
    inter: np.ndarray, union: np.ndarray, weights: Sequence[float] | np.ndarray | None, empty: float
) -> float:
    """``sum_t w_t inter_t / sum_t w_t union_t`` over ``[T]`` counts; ``empty`` when the union is empty."""
    if weights is None:
        total_inter, total_union = inter.sum(), union.sum()
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != inter.shape:
            raise ValueError(f"weights must be [T] = {inter.shape}, got shape {w.shape}")
        if (w < 0).any():
            raise ValueError("weights must be non-negative")
        total_inter, total_union = (w * inter).sum(), (w * union).sum()
    return float(iou_from_counts(total_inter, total_union, empty=empty))


def dense_tube_viou(
    a: np.ndarray, b: np.ndarray, weights: Sequence[float] | np.ndarray | None = None, *, empty: float = 0.0
) -> float:
    """Volume IoU of two bool tubes ``[T, H, W]``.

    ``weights`` ``[T]`` (non-negative) counts frame t ``weights[t]`` times, e.g.
    a model frame standing for several video frames. Two empty tubes (or an
    all-zero weighted union) give ``empty``: 0 by default, the metric convention;
    ``empty=1.0`` where two empty tubes agree exactly (module docstring).
    """
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"tubes must both be [T, H, W], got shapes {a.shape} and {b.shape}")
    inter, union = _overlap_counts(a, b, 2)  # [T]
    return _weighted_ratio(inter, union, weights, empty)


def rle_tube_viou(
    a: Sequence[dict | None],
    b: Sequence[dict | None],
    weights: Sequence[float] | np.ndarray | None = None,
    *,
    empty: float = 0.0,
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
    return _weighted_ratio(inter, area_a + area_b - inter, weights, empty)


def _coco_frames(rles: Sequence[dict | None]) -> tuple[list[dict | None], np.ndarray]:
    """Per-frame pycocotools RLEs and their int64 ``[T]`` areas (0 where absent)."""
    coco = [None if r is None else coco_rle(r) for r in rles]
    present = [t for t, r in enumerate(coco) if r is not None]
    areas = np.zeros(len(coco), dtype=np.int64)
    areas[present] = rle_areas([coco[t] for t in present])
    return coco, areas
