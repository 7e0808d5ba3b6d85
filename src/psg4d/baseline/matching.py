"""Hungarian matching of a segmenter's queries to a frame's gold segments (Mask2Former's matcher).

:func:`hungarian` is the only place the segmenter's training touches scipy
(``scipy.optimize.linear_sum_assignment``); :func:`segment_cost` builds Mask2Former's matching
cost (class probability, mask BCE and Dice) over every pixel — frames here are small enough that
the point sampling Mask2Former uses to save memory is not needed — and :func:`match_queries`
ties the two together.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

__all__ = ["hungarian", "match_queries", "segment_cost"]


def hungarian(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost one-to-one assignment of rows to columns of ``cost`` ``[Q, G]``.

    Returns ``(rows, cols)``, int64 arrays of length ``min(Q, G)``, rows ascending. Rectangular
    matrices either way and empty ones (``Q == 0`` or ``G == 0``) are fine. NaN or infinite
    entries raise ``ValueError``: they mean a diverged model upstream, and scipy would either
    reject them with a less helpful message or (for ``inf``) call the matrix infeasible.
    """
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2:
        raise ValueError(f"cost must be a 2-D [Q, G] matrix, got shape {cost.shape}")
    if cost.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if not np.isfinite(cost).all():
        raise ValueError("cost matrix has NaN or infinite entries")
    rows, cols = linear_sum_assignment(cost)
    return rows.astype(np.int64), cols.astype(np.int64)


@torch.no_grad()
def segment_cost(class_logits: Tensor, mask_logits: Tensor, gt_labels: Tensor, gt_masks: Tensor, *,
                 class_weight: float, mask_weight: float, dice_weight: float) -> Tensor:
    """Mask2Former's matching cost ``[Q, G]`` of predictions to gold segments (no gradient).

    ``class_logits`` ``[Q, C+1]`` (last column "no object"), ``mask_logits`` ``[Q, H, W]``,
    ``gt_labels`` ``[G]`` long in ``[0, C)``, ``gt_masks`` ``[G, H', W']`` bool (the logits are
    bilinearly resized to ``H' x W'`` when the sizes differ). Cost =
    ``-class_weight * p(gt class) + mask_weight * mean pixel BCE + dice_weight * (1 - Dice)``.
    """
    q, g = class_logits.shape[0], gt_labels.shape[0]
    if q == 0 or g == 0:
        return class_logits.new_zeros(q, g, dtype=torch.float32)
    logits = mask_logits.float()
    if logits.shape[-2:] != gt_masks.shape[-2:]:
        logits = F.interpolate(logits[None], size=gt_masks.shape[-2:], mode="bilinear", align_corners=False)[0]
    prob = class_logits.float().softmax(-1)  # [Q, C+1]
    cost_class = -prob[:, gt_labels]  # [Q, G]

    x = logits.flatten(1)  # [Q, P]
    y = gt_masks.flatten(1).to(x.dtype)  # [G, P]
    n_pix = x.shape[1]
    # BCE(x, y) summed over pixels = softplus(-x) . y + softplus(x) . (1 - y) = sum softplus(x) - x . y
    # (softplus(-x) = softplus(x) - x): one matmul gives every (query, segment) pair at once
    cost_mask = (F.softplus(x).sum(-1)[:, None] - x @ y.T) / n_pix  # [Q, G]

    p = x.sigmoid()  # [Q, P]
    inter = p @ y.T  # [Q, G]
    cost_dice = 1.0 - (2.0 * inter + 1.0) / (p.sum(-1)[:, None] + y.sum(-1)[None, :] + 1.0)  # [Q, G]
    return class_weight * cost_class + mask_weight * cost_mask + dice_weight * cost_dice


def match_queries(class_logits: Tensor, mask_logits: Tensor, gt_labels: Tensor, gt_masks: Tensor, *,
                  class_weight: float, mask_weight: float, dice_weight: float) -> tuple[Tensor, Tensor]:
    """``(query_idx, gt_idx)``: LongTensors of length ``min(Q, G)`` on the logits' device, the
    optimal one-to-one pairing under :func:`segment_cost` (shapes as there)."""
    cost = segment_cost(class_logits, mask_logits, gt_labels, gt_masks, class_weight=class_weight,
                        mask_weight=mask_weight, dice_weight=dice_weight)  # [Q, G]
    rows, cols = hungarian(cost.cpu().numpy())
    device = class_logits.device
    return torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device)
