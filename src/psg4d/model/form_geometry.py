"""An object's form (size and shape words) read from its tube's geometry, not from what it looks like.

The attribute head's form fields read the scene encoder's map, and that map was trained to tell
categories apart: under a novel object it holds the nearest training category, so a small red apple
reads as a stapler's "long block" (issue 21, BENCHMARKS.md). A size word is a statement about metres
and a shape word about a surface, and both can be measured: with depth and intrinsics each pixel of
a tube back-projects to a 3D point, and its points' spread (:func:`tube_geometry`) says how big, how
elongated, how flat and how curved the object is, whatever its category.

:class:`FormReader` maps those measurements to the words. Size is read as two parts that compose the
description's size phrase (:mod:`psg4d.data.synth.describe`): a **proportion** (tall, long, wide, flat or
none) and an **absolute** size (small, large or none) that the phrase keeps only beside flat or none,
so a "small flat" phone is read from small cans and flat books though no training object was both.
It trains in ``attribute_fit`` on the training videos' true tubes, cut to the mask decoder's grid as a
predicted tube is (:func:`grid_tubes`), and reads only where a video has depth and intrinsics.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

#: the fields read from geometry (the others stay with the attribute head)
FORM_FIELDS = ("size", "shape")
#: size words that say how an object is proportioned; the rest of a size phrase is its absolute size
PROPORTIONS = ("", "tall", "long", "wide", "flat")
ABSOLUTES = ("", "small", "large")
#: proportions beside which a size phrase also writes the absolute size ("small flat", "small")
KEEPS_ABSOLUTE = ("", "flat")
#: fewest pixels of a frame's mask that are measured (fewer: the frame is left out)
MIN_PIXELS = 6
#: the ring of pixels around a mask whose depth is the surface it stands out of (:func:`snap_to_depth`), and
#: how far in front of that surface a pixel must be to be the object's
RING_PIXELS = 3
ABOVE_METRES = 0.05
#: per-frame measurements (:func:`frame_geometry`), each summarised over the tube's frames by these quantiles
PER_FRAME = 12
QUANTILES = (0.2, 0.5, 0.8)
NUM_FEATURES = PER_FRAME * len(QUANTILES) + 1


def split_size(phrase: str) -> tuple[str, str | None]:
    """A size phrase -> ``(proportion, absolute)``; absolute is None where the phrase does not say it
    (beside tall, long, wide): ``"small flat"`` -> ``("flat", "small")``, ``"tall"`` -> ``("tall", None)``."""
    words = phrase.split()
    prop = next((w for w in words if w in PROPORTIONS[1:]), "")
    absolute = next((w for w in words if w in ABSOLUTES[1:]), "")
    if set(words) - {prop, absolute} or len(words) > 2:
        raise ValueError(f"not a size phrase: {phrase!r}")
    return prop, (absolute if prop in KEEPS_ABSOLUTE else None)


def size_phrase(prop: str, absolute: str) -> str:
    """The inverse of :func:`split_size`: ``("flat", "small")`` -> ``"small flat"``, ``("tall", "small")`` -> ``"tall"``."""
    if prop not in KEEPS_ABSOLUTE:
        return prop
    return f"{absolute} {prop}".strip()


def grid_tubes(masks: torch.Tensor, grid: int) -> torch.Tensor:
    """``masks [N, T, H, W]`` bool -> the same tubes as the mask decoder's ``grid x grid`` cells can draw
    them (a cell is in where at least half its area is), back at ``H x W``: a predicted tube's blockiness."""
    n, t, h, w = masks.shape
    cells = F.adaptive_avg_pool2d(masks.float().flatten(0, 1)[:, None], (grid, grid)) >= 0.5
    return F.interpolate(cells.float(), size=(h, w), mode="nearest")[:, 0].view(n, t, h, w) > 0


def snap_to_depth(masks: torch.Tensor, depth: torch.Tensor, *, ring: int = RING_PIXELS,
                  above: float = ABOVE_METRES) -> torch.Tensor:
    """``masks [N, T, H, W]`` bool cut to the pixels that stand out of the surface around them -> same shape.

    A predicted tube is drawn in the mask decoder's cells (4 pixels wide in the tiny model), and for a small
    object most of its pixels are the table it stands on; measured, that table is the object's size. The
    surface is the ring of pixels just outside the mask in each frame (``ring`` wide): its inverse depth is
    fitted by an affine function of the pixel (a plane's inverse depth is one), three times: on the whole
    ring, on the half of it that fit best, and on the ring pixels within ``above`` of that (not another
    object or a hand in the ring). A mask
    pixel is kept where it is more than ``above`` metres in front of that plane. A frame whose ring is too
    small to fit, or whose mask would keep fewer than :data:`MIN_PIXELS` pixels, keeps its mask."""
    n, t, h, w = masks.shape
    z = depth.to(torch.float64)  # [T, H, W]
    valid = z > 0
    inv = torch.where(valid, 1.0 / z.clamp(min=1e-6), 0.0)
    near = F.max_pool2d(masks.float().flatten(0, 1)[:, None], 2 * ring + 1, stride=1, padding=ring)[:, 0]
    around = (near.view(n, t, h, w) > 0) & ~masks & valid  # [N, T, H, W]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64) / h, torch.arange(w, dtype=torch.float64) / w,
                            indexing="ij")
    basis = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1)  # [H, W, 3]
    wgt = around.to(torch.float64)
    for step in range(3):
        gram = torch.einsum("nthw,hwi,hwj->ntij", wgt, basis, basis) + 1e-9 * torch.eye(3, dtype=torch.float64)
        coef = torch.linalg.solve(gram, torch.einsum("nthw,hwi,thw->nti", wgt, basis, inv))  # [N, T, 3]
        plane = torch.einsum("nti,hwi->nthw", coef, basis).clamp(min=1e-6)  # [N, T, H, W] inverse depth
        gap = z[None] - 1.0 / plane  # a pixel's depth minus the plane's there, metres (positive: behind it)
        if step == 0:  # refit on the better half of the ring, then on what lies on that fit
            err = torch.where(around, gap.abs(), torch.nan).flatten(2)
            wgt = (around & (gap.abs() <= torch.nanquantile(err, 0.5, dim=2)[..., None, None])).to(torch.float64)
        else:
            wgt = (around & (gap.abs() < above)).to(torch.float64)
    fitted = wgt.sum(dim=(2, 3)) >= MIN_PIXELS  # [N, T]
    kept = masks & valid & (gap < -above)
    enough = kept.sum(dim=(2, 3)) >= MIN_PIXELS
    use = (fitted & enough)[..., None, None]
    return torch.where(use, kept, masks)


def frame_geometry(masks: torch.Tensor, depth: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """Measurements of each tube in each frame -> ``[N, T, PER_FRAME]`` (NaN where the frame's mask has fewer
    than :data:`MIN_PIXELS` pixels with depth), from ``masks [N, T, H, W]`` bool, ``depth [T, H, W]``
    metres and the pinhole ``intrinsics [3, 3]`` of an ``H x W`` frame.

    Each pixel back-projects to a camera-frame point. The measurements: the log extents of the points
    along the camera axes and along their principal axes (largest first; their 5-95 % ranges, which a
    few stray pixels of another surface do not stretch), the flatness (third principal spread over the first), the fill of the
    mask's bounding box (a block's face fills it, a disc pi/4), the curvature of a quadric fitted to the
    surface across its two main axes (a sphere's is large, a block face's none), the log pixel count and
    the log mean depth."""
    n, t, h, w = masks.shape
    fx, fy, cx, cy = (float(intrinsics[0, 0]), float(intrinsics[1, 1]), float(intrinsics[0, 2]), float(intrinsics[1, 2]))
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    z = depth.to(torch.float64)  # [T, H, W]
    pts = torch.stack([(xs - cx) * z / fx, (ys - cy) * z / fy, z], dim=-1)  # [T, H, W, 3]
    wgt = (masks & (depth > 0)).to(torch.float64)  # [N, T, H, W]
    count = wgt.sum(dim=(2, 3))  # [N, T]
    denom = count.clamp(min=1)[..., None]
    mean = torch.einsum("nthw,thwc->ntc", wgt, pts) / denom  # [N, T, 3]
    second = torch.einsum("nthw,thwc,thwd->ntcd", wgt, pts, pts) / denom[..., None]
    cov = second - mean[..., :, None] * mean[..., None, :]  # [N, T, 3, 3]
    cov = 0.5 * (cov + cov.transpose(-1, -2)) + 1e-12 * torch.eye(3, dtype=cov.dtype)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    evals, evecs = evals.flip(-1).clamp(min=0), evecs.flip(-1)  # [N, T, 3], [N, T, 3, 3] largest first
    # robust extents: 5-95 % of the points along each axis (a spilled cell's table points are the tail)
    inside = wgt > 0  # [N, T, H, W]
    cam = torch.where(inside[..., None], pts[None], torch.nan).flatten(2, 3)  # [N, T, HW, 3]
    rel = cam - mean[:, :, None, :]
    loc = torch.einsum("ntpc,ntcd->ntpd", torch.nan_to_num(rel), evecs)
    loc = torch.where(inside.flatten(2, 3)[..., None], loc, torch.nan)  # [N, T, HW, 3] principal coordinates
    cam_ext = torch.log(_spread(cam) + 1e-3)  # [N, T, 3]
    pca_ext = torch.log(_spread(loc) + 1e-3)  # [N, T, 3]
    flat = evals[..., 2].sqrt() / (evals[..., 0].sqrt() + 1e-6)  # [N, T]
    # the fill of the bounding box
    rows, cols = masks.any(dim=3), masks.any(dim=2)  # [N, T, H], [N, T, W]
    ar_h, ar_w = torch.arange(h), torch.arange(w)
    height = (torch.where(rows, ar_h, -1).amax(-1) - torch.where(rows, ar_h, h).amin(-1) + 1).clamp(min=1)
    width = (torch.where(cols, ar_w, -1).amax(-1) - torch.where(cols, ar_w, w).amin(-1) + 1).clamp(min=1)
    fill = masks.sum(dim=(2, 3)).to(torch.float64) / (height * width).to(torch.float64)  # [N, T]
    curvature = _quadric_curvature(wgt, pts, mean, evecs, pca_ext)  # [N, T, 2]
    feats = torch.cat([cam_ext, pca_ext, flat[..., None], fill[..., None], curvature,
                       torch.log(count.clamp(min=1))[..., None], torch.log(mean[..., 2].clamp(min=1e-3))[..., None]], dim=-1)
    return torch.where((count >= MIN_PIXELS)[..., None], feats, torch.nan).float()  # [N, T, PER_FRAME]


def _spread(points: torch.Tensor) -> torch.Tensor:
    """5-95 % range of ``points [N, T, P, 3]`` (NaN: not a point) along each axis -> ``[N, T, 3]`` (0: no points)."""
    q = torch.nanquantile(points, torch.tensor([0.05, 0.95], dtype=points.dtype), dim=2)  # [2, N, T, 3]
    return torch.nan_to_num(q[1] - q[0], nan=0.0)


def _quadric_curvature(wgt: torch.Tensor, pts: torch.Tensor, mean: torch.Tensor, evecs: torch.Tensor,
                       pca_ext: torch.Tensor) -> torch.Tensor:
    """The magnitudes of the ``a^2`` and ``b^2`` terms of ``c = f(a, b)`` fitted by weighted least squares in each
    tube's principal frame (a, b its two main axes, c the third), each times its axis' extent -> ``[N, T, 2]``:
    a sphere curves across both, a cylinder's side across one, a block's face across none."""
    rel = pts[None] - mean[:, :, None, None, :]  # [N, T, H, W, 3]
    loc = torch.einsum("nthwc,ntcd->nthwd", rel, evecs)  # [N, T, H, W, 3] principal coordinates
    a, b, c = loc.unbind(-1)
    basis = torch.stack([torch.ones_like(a), a, b, a * a, b * b, a * b], dim=-1)  # [N, T, H, W, 6]
    gram = torch.einsum("nthw,nthwi,nthwj->ntij", wgt, basis, basis) + 1e-9 * torch.eye(6, dtype=basis.dtype)
    rhs = torch.einsum("nthw,nthwi,nthw->nti", wgt, basis, c)
    coef = torch.linalg.solve(gram, rhs)  # [N, T, 6]
    return coef[..., 3:5].abs() * pca_ext[..., :2].exp()  # [N, T, 2] curvature across each main axis, scaled


def tube_geometry(masks: torch.Tensor, depth: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """The form measurements of each tube ``masks [N, T, H, W]`` -> ``[N, NUM_FEATURES]``: each of
    :func:`frame_geometry`'s measurements at the :data:`QUANTILES` over the frames it was measured in, and
    the share of frames measured; all zero (with share 0) for a tube measured in no frame."""
    per = frame_geometry(masks, depth, intrinsics)  # [N, T, PER_FRAME]
    seen = ~per[..., 0].isnan()  # [N, T]
    q = torch.nanquantile(per, torch.tensor(QUANTILES), dim=1)  # [Q, N, PER_FRAME]
    q = torch.nan_to_num(q.permute(1, 0, 2).flatten(1), nan=0.0)  # [N, Q * PER_FRAME]
    return torch.cat([q, seen.float().mean(dim=1, keepdim=True)], dim=1)


def measure_tubes(masks: torch.Tensor, depth: torch.Tensor, intrinsics: torch.Tensor, *, grid: int | None = None,
                  above: float = ABOVE_METRES) -> torch.Tensor:
    """:func:`tube_geometry` of ``masks [N, T, H, W]`` as the form reader reads them, in training and at reading
    alike: first cut to the mask decoder's ``grid`` (:func:`grid_tubes`; None: drawn already, a predicted
    tube), then snapped to what stands ``above`` metres in front of its surroundings (:func:`snap_to_depth`;
    0: not snapped) -> ``[N, NUM_FEATURES]``."""
    if grid is not None:
        masks = grid_tubes(masks, grid)
    if above > 0:
        masks = snap_to_depth(masks, depth, above=above)
    return tube_geometry(masks, depth, intrinsics)


class FormReader(nn.Module):
    """Size and shape logits from :func:`tube_geometry`'s measurements ``[N, NUM_FEATURES]``: a small
    network per part (proportion, absolute size, shape) after a running standardisation of the
    measurements (batch statistics in training, as an input batch norm keeps them)."""

    def __init__(self, *, shapes: Sequence[str], hidden: int = 32):
        super().__init__()
        self.shapes = list(shapes)
        self.norm = nn.BatchNorm1d(NUM_FEATURES, affine=False)
        self.parts = nn.ModuleDict({
            "proportion": _mlp(hidden, len(PROPORTIONS)),
            "absolute": _mlp(hidden, len(ABSOLUTES)),
            "shape": _mlp(hidden, len(self.shapes)),
        })

    def forward(self, geometry: torch.Tensor) -> dict[str, torch.Tensor]:
        """-> logits per part: ``proportion [N, 5]``, ``absolute [N, 3]``, ``shape [N, K_shape]``."""
        x = self.norm(geometry.float())
        return {k: net(x) for k, net in self.parts.items()}

    def loss(self, geometry: torch.Tensor, size: Sequence[str | None], shape: Sequence[str | None]) -> torch.Tensor:
        """Cross-entropy of each part against the objects' size phrases and shape words (None: unknown,
        e.g. a hand; an absolute size a phrase does not say is not learned), mean over the parts that have
        a target; an exact zero where none has one."""
        logits = self(geometry)
        targets = {"proportion": [], "absolute": [], "shape": []}
        for sz, sh in zip(size, shape):
            prop, absolute = split_size(sz) if sz is not None else (None, None)
            targets["proportion"].append(-100 if prop is None else PROPORTIONS.index(prop))
            targets["absolute"].append(-100 if absolute is None else ABSOLUTES.index(absolute))
            targets["shape"].append(-100 if sh is None or sh not in self.shapes else self.shapes.index(sh))
        total, parts = geometry.new_zeros(()), 0
        for k, lg in logits.items():
            t = torch.tensor(targets[k], dtype=torch.long, device=lg.device)
            if bool((t >= 0).any()):
                total = total + F.cross_entropy(lg.float(), t, ignore_index=-100)
                parts += 1
        if parts == 0:
            return sum(lg.sum() for lg in logits.values()) * 0
        return total / parts

    @torch.inference_mode()
    def field_scores(self, geometry: torch.Tensor, values: Mapping[str, Sequence[str]]) -> dict[str, torch.Tensor]:
        """Log-probabilities of every value of the ``size`` and ``shape`` fields (``values``, the attribute
        head's) -> ``{field: [N, K_field]}``. A size phrase's is its proportion's plus, where the phrase
        keeps it, its absolute size's; a phrase the parts cannot write gets -inf."""
        logp = {k: torch.log_softmax(v.float(), dim=1) for k, v in self(geometry).items()}
        n = geometry.shape[0]
        size = torch.full((n, len(values["size"])), float("-inf"), device=geometry.device)
        for j, phrase in enumerate(values["size"]):
            prop, absolute = split_size(phrase)
            score = logp["proportion"][:, PROPORTIONS.index(prop)]
            if absolute is not None:
                score = score + logp["absolute"][:, ABSOLUTES.index(absolute)]
            size[:, j] = score
        shape = torch.full((n, len(values["shape"])), float("-inf"), device=geometry.device)
        for j, word in enumerate(values["shape"]):
            if word in self.shapes:
                shape[:, j] = logp["shape"][:, self.shapes.index(word)]
        return {"size": size, "shape": shape}


def _mlp(hidden: int, out: int) -> nn.Module:
    if hidden == 0:  # a linear read-out
        return nn.Linear(NUM_FEATURES, out)
    return nn.Sequential(nn.Linear(NUM_FEATURES, hidden), nn.GELU(), nn.Linear(hidden, out))
