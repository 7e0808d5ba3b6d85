"""Geometry of mask tubes and frame spans, shared by both evaluation protocols.

Everything works on COCO RLEs through pycocotools (``iou``, ``area``), never on
pixels in Python, so a 480p, 900-frame video costs what its run lengths cost.

The unit both protocols need is the per-frame overlap of every predicted tube
with every ground-truth tube of a video: :func:`tube_overlaps` computes it once
per video as a :class:`TubeOverlap` (arrays ``[N_pred, N_gt, T]``), so scoring
100 candidates against a video's relations is array indexing, not mask work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from pycocotools import mask as mask_utils

from psg4d.data.masks import coco_rle, iou_from_counts, mask_iou, rle_areas
from psg4d.data.schema import MaskTube, Span


def span_mask(spans: Sequence[Span], num_frames: int) -> np.ndarray:
    """bool ``[T]``: frames covered by inclusive ``[start, end]`` spans (clipped to the video)."""
    out = np.zeros(num_frames, dtype=bool)
    for a, b in spans:
        out[max(int(a), 0) : min(int(b), num_frames - 1) + 1] = True
    return out


def span_masks(span_lists: Sequence[Sequence[Span]], num_frames: int) -> np.ndarray:
    """bool ``[N, T]``, one row per span list."""
    out = np.zeros((len(span_lists), num_frames), dtype=bool)
    for i, spans in enumerate(span_lists):
        out[i] = span_mask(spans, num_frames)
    return out


def span_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Temporal IoU of frame masks ``[..., T]`` (broadcasting); 0 where both are empty."""
    return mask_iou(a, b, dims=1)


@dataclass
class TubeOverlap:
    """Per-frame overlap of predicted tubes (rows) with ground-truth tubes (columns).

    ``iou``/``inter``: ``[N_pred, N_gt, T]`` mask IoU and intersection area (0 where
    either mask is absent or both are empty); ``pred_area``/``gt_area``:
    ``[N, T]`` pixel areas; ``pred_present``: ``[N_pred, T]`` whether the predicted
    tube has a mask at all in that frame (the ``pvsg`` protocol asks for it).
    """

    iou: np.ndarray
    inter: np.ndarray
    pred_area: np.ndarray
    gt_area: np.ndarray
    pred_present: np.ndarray


def _tube_frames(tubes: Sequence[MaskTube | None], num_frames: int) -> tuple[list[list[dict | None]], np.ndarray]:
    """Per-tube, per-frame coco RLEs and the ``[N, T]`` areas (one pycocotools call)."""
    rles: list[list[dict | None]] = []
    flat: list[dict] = []
    where: list[tuple[int, int]] = []
    for i, tube in enumerate(tubes):
        row: list[dict | None] = [None] * num_frames
        if tube is not None:
            for t, r in enumerate(tube.rles[:num_frames]):
                if r is not None:
                    row[t] = coco_rle(r)
                    flat.append(row[t])
                    where.append((i, t))
        rles.append(row)
    areas = np.zeros((len(tubes), num_frames), dtype=np.int64)
    if flat:
        idx = np.asarray(where)
        areas[idx[:, 0], idx[:, 1]] = rle_areas(flat)
    return rles, areas


def tube_overlaps(
    pred_tubes: Sequence[MaskTube | None], gt_tubes: Sequence[MaskTube | None], num_frames: int
) -> TubeOverlap:
    """Per-frame IoU and intersection of every predicted tube with every GT tube.

    One ``pycocotools.mask.iou`` call per frame over the tubes present in that
    frame. Intersections are recovered from IoU and areas
    (``i = iou * (a + b) / (1 + iou)``), exact after rounding for any mask size
    pycocotools handles. A ``None`` tube is absent in every frame.
    """
    n_p, n_g = len(pred_tubes), len(gt_tubes)
    p_rles, p_area = _tube_frames(pred_tubes, num_frames)
    g_rles, g_area = _tube_frames(gt_tubes, num_frames)
    iou = np.zeros((n_p, n_g, num_frames), dtype=np.float64)
    for t in range(num_frames):
        pi = [i for i in range(n_p) if p_rles[i][t] is not None and p_area[i, t] > 0]
        gi = [j for j in range(n_g) if g_rles[j][t] is not None and g_area[j, t] > 0]
        if not pi or not gi:
            continue
        m = mask_utils.iou([p_rles[i][t] for i in pi], [g_rles[j][t] for j in gi], [0] * len(gi))
        iou[np.ix_(pi, gi, [t])] = np.asarray(m, dtype=np.float64)[:, :, None]
    area_sum = p_area[:, None, :] + g_area[None, :, :]
    inter = np.rint(iou * area_sum / (1.0 + iou)).astype(np.int64)
    present = np.array(
        [[r is not None for r in row] for row in p_rles], dtype=bool
    ).reshape(n_p, num_frames)
    return TubeOverlap(iou=iou, inter=inter, pred_area=p_area, gt_area=g_area, pred_present=present)


def overlap_tube_viou(
    overlap: TubeOverlap, pred_idx: np.ndarray, gt_idx: np.ndarray, pred_frames: np.ndarray, gt_frames: np.ndarray
) -> np.ndarray:
    """Volumetric IoU, read off a precomputed :class:`TubeOverlap`, of predicted tubes
    ``pred_idx[m]`` cut to frames ``pred_frames[m]`` against GT tubes ``gt_idx[m]``
    cut to ``gt_frames[m]``, for M pairs at once.

    ``sum_t |GT_t ∩ P_t| / (sum_{GT frames} |GT_t| + sum_{pred frames} |P_t| - intersection)``
    with the intersection counted over frames in both cuts, so predicted frames
    outside the truth add their area to the union. Returns ``[M]``; 0 where the
    union is empty (:func:`psg4d.data.masks.iou_from_counts`' default): an empty
    pair must not count as a hit for recall.
    """
    pf = np.asarray(pred_frames, dtype=bool)
    gf = np.asarray(gt_frames, dtype=bool)
    inter = (overlap.inter[pred_idx, gt_idx] * (pf & gf)).sum(-1)
    union = (overlap.gt_area[gt_idx] * gf).sum(-1) + (overlap.pred_area[pred_idx] * pf).sum(-1) - inter
    return iou_from_counts(inter, union)


def frame_ious(pred: MaskTube, gt: MaskTube) -> np.ndarray:
    """float ``[T]``: mask IoU of two tubes frame by frame (0 where either is absent)."""
    return tube_overlaps([pred], [gt], gt.num_frames).iou[0, 0]


def pair_viou(pred: MaskTube, gt: MaskTube, pred_spans: Sequence[Span], gt_spans: Sequence[Span]) -> float:
    """:func:`overlap_tube_viou` of one predicted tube over ``pred_spans`` against one GT tube over ``gt_spans``."""
    T = gt.num_frames
    ov = tube_overlaps([pred], [gt], T)
    zero = np.zeros(1, dtype=np.int64)
    return float(overlap_tube_viou(ov, zero, zero, span_mask(pred_spans, T)[None], span_mask(gt_spans, T)[None])[0])
