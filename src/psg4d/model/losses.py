"""Losses of the 4D-LLM's visual outputs: SAM-style mask-tube losses and the dense segmentation loss.

``mask_losses`` supervises every (object, frame) pair: frames where the object
is absent have an all-false target and are learned as empty masks.

- ``focal``: sigmoid focal loss (alpha 0.25, gamma 2), mean over pixels, then
  over masks.
- ``dice``: ``1 - (2 |P.G| + 1) / (|P| + |G| + 1)`` on sigmoid probabilities,
  per mask, mean over masks. The +1 smoothing makes an empty target with an
  empty prediction cost ~0 and an empty target with a non-empty prediction
  cost ~1, so absent frames are pushed to empty masks.
- ``presence`` (only when ``object_logits`` is given, e.g. from SAM2's
  object-score head via ``TubeDecoder.decode``): BCE between the per-frame
  object logit and "the target mask is non-empty".
- ``iou``: MSE between ``iou_pred`` and the actual IoU of the thresholded
  prediction (logit > 0) with the target; IoU of empty vs empty is 1. The IoU
  target is detached (it is a label for the IoU head, not a mask loss).

The target is resized to the logits' size with area interpolation (a soft
target in [0, 1] at the boundary) rather than upsampling the logits: the loss
then costs ``h*w`` per mask instead of ``H*W`` (16x less for a 4x size gap) and
boundary pixels get fractional labels instead of a hard aliasing decision.

``segmentation_loss`` is the auxiliary per-cell category loss of the encoder's
dense maps (``model.seg_loss_weight``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from psg4d.data.masks import mask_iou


@dataclass
class LossConfig:
    focal_weight: float = 20.0  # SAM's 20:1 focal:dice ratio
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    presence_weight: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


def resize_target(target: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[N, T, H, W]`` bool -> ``[N, T, h, w]`` float in [0, 1] (area-averaged)."""
    t = target.float()
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    n, f = t.shape[:2]
    flat = t.reshape(n * f, 1, *t.shape[-2:])
    if flat.shape[-2] >= size[0] and flat.shape[-1] >= size[1]:
        out = F.adaptive_avg_pool2d(flat, size)  # area average: the covered fraction
    else:
        out = F.interpolate(flat, size=size, mode="nearest")  # logits larger than the target
    return out.reshape(n, f, *size)


def sigmoid_focal(logits: torch.Tensor, target: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Per-pixel sigmoid focal loss ``[...] -> [...]`` (soft targets allowed)."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return loss


def mask_losses(
    mask_logits: torch.Tensor,
    iou_pred: torch.Tensor,
    target: torch.Tensor,
    *,
    cfg: LossConfig | None = None,
    object_logits: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """``mask_logits [N, T, h, w]``, ``iou_pred [N, T]``, ``target [N, T, H, W]`` bool.

    Returns scalars ``focal``, ``dice``, ``iou`` (plus ``presence`` when
    ``object_logits [N, T]`` is given) and the weighted ``total``.
    """
    cfg = cfg or LossConfig()
    if mask_logits.shape[:2] != target.shape[:2] or iou_pred.shape != mask_logits.shape[:2]:
        raise ValueError(
            f"shape mismatch: mask_logits {tuple(mask_logits.shape)}, iou_pred {tuple(iou_pred.shape)}, "
            f"target {tuple(target.shape)}"
        )
    logits = mask_logits.float()
    if object_logits is not None and object_logits.shape != iou_pred.shape:
        raise ValueError(f"shape mismatch: object_logits {tuple(object_logits.shape)}, iou_pred {tuple(iou_pred.shape)}")
    if logits.numel() == 0:
        zero = logits.sum() + iou_pred.float().sum()  # keeps the graph for empty videos
        if object_logits is not None:
            zero = zero + object_logits.float().sum()
            return {"focal": zero, "dice": zero, "iou": zero, "presence": zero, "total": zero}
        return {"focal": zero, "dice": zero, "iou": zero, "total": zero}
    tgt = resize_target(target, tuple(logits.shape[-2:]))  # [N, T, h, w]
    focal = sigmoid_focal(logits, tgt, cfg.focal_alpha, cfg.focal_gamma).flatten(-2).mean(-1).mean()
    prob = logits.sigmoid().flatten(-2)
    flat_t = tgt.flatten(-2)
    dice = (1 - (2 * (prob * flat_t).sum(-1) + 1) / (prob.sum(-1) + flat_t.sum(-1) + 1)).mean()
    actual = mask_iou(logits.detach() > 0, tgt > 0.5, empty=1.0)  # [N, T]; empty/empty = 1 (module docstring)
    iou = F.mse_loss(iou_pred.float(), actual)
    total = cfg.focal_weight * focal + cfg.dice_weight * dice + cfg.iou_weight * iou
    out = {"focal": focal, "dice": dice, "iou": iou}
    if object_logits is not None:
        present = target.flatten(-2).any(-1).float()  # [N, T]
        out["presence"] = F.binary_cross_entropy_with_logits(object_logits.float(), present)
        total = total + cfg.presence_weight * out["presence"]
    out["total"] = total
    return out


def segmentation_loss(logits: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
    """Class-balanced soft cross-entropy of per-cell category ``logits [N, C, h, w]`` against
    ``semantic [N, S, S]`` (category index per pixel, ``C - 1`` = unlabelled) pooled to ``h x w``
    area fractions.

    Inverse-sqrt class frequency (batch counts), normalised to mean weight 1 per cell: the table
    and walls would otherwise drown objects of a few pixels. Uniform logits cost exactly log(C)."""
    n_cls, (h, w) = logits.shape[1], logits.shape[-2:]
    onehot = F.one_hot(semantic.to(logits.device), n_cls)  # [N, S, S, C]
    soft = F.adaptive_avg_pool2d(onehot.permute(0, 3, 1, 2).float(), (h, w))  # [N, C, h, w]
    counts = soft.sum(dim=(0, 2, 3))  # [C]
    weight = (counts.sum() / (counts + 1.0)).sqrt()
    weight = weight * counts.sum() / (weight * counts).sum().clamp(min=1e-6)
    return F.cross_entropy(logits.float(), soft, weight=weight)
