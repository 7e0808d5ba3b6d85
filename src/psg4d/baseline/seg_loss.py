"""Mask2Former's training loss for the query segmenter, with deep supervision.

For every prediction layer (the final output and each ``outputs["aux"]`` entry) the queries are
matched one to one to the frame's gold segments (:func:`~psg4d.baseline.matching.match_queries`,
the same weights as the loss); then

* ``loss_class``: cross-entropy over *all* queries, the unmatched ones targeting "no object"
  (class index C) with weight ``no_object_weight`` — most queries are unmatched, and without the
  down-weighting they would teach the model to predict nothing;
* ``loss_mask``: mean pixel BCE of each matched query's mask against its segment;
* ``loss_dice``: 1 - Dice of the same pairs (BCE alone is dominated by background on small objects).

The mask terms are summed over matched pairs and divided by the number of gold segments in the
batch (at least 1). Every component is summed over the layers, and
``loss = class_weight * loss_class + mask_weight * loss_mask + dice_weight * loss_dice``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from psg4d.baseline.config import SegmenterConfig
from psg4d.baseline.matching import match_queries

__all__ = ["SegmentationLoss", "dice_loss"]


def dice_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """``[N]`` 1 - Dice of mask logits ``[N, H, W]`` against float targets ``[N, H, W]`` (smoothed
    by 1, so an empty target and an empty prediction cost 0)."""
    p = logits.sigmoid().flatten(1)  # [N, P]
    t = targets.flatten(1)  # [N, P]
    return 1.0 - (2.0 * (p * t).sum(-1) + 1.0) / (p.sum(-1) + t.sum(-1) + 1.0)


class SegmentationLoss(nn.Module):
    """Matched class / mask / Dice losses summed over the final and auxiliary predictions."""

    def __init__(self, *, config: SegmenterConfig) -> None:
        super().__init__()
        self.config = config
        self.num_classes = len(config.class_names)
        weight = torch.ones(self.num_classes + 1)
        weight[-1] = config.no_object_weight
        self.register_buffer("class_loss_weight", weight, persistent=False)  # [C+1]

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        """``outputs`` as :meth:`QuerySegmenter.forward` returns; ``targets[b]`` = ``{"labels": [G]
        long, "masks": [G, H, W] bool}`` (G may be 0). Returns ``loss`` (to backpropagate) and its
        unweighted components ``loss_class``, ``loss_mask``, ``loss_dice``."""
        if len(targets) != outputs["class_logits"].shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {outputs['class_logits'].shape[0]} frames")
        num_masks = max(sum(int(t["labels"].numel()) for t in targets), 1)
        parts = [self._layer(out, targets, num_masks) for out in (outputs, *outputs.get("aux", []))]
        loss_class = torch.stack([p[0] for p in parts]).sum()
        loss_mask = torch.stack([p[1] for p in parts]).sum()
        loss_dice = torch.stack([p[2] for p in parts]).sum()
        c = self.config
        loss = c.class_weight * loss_class + c.mask_weight * loss_mask + c.dice_weight * loss_dice
        return {"loss": loss, "loss_class": loss_class, "loss_mask": loss_mask, "loss_dice": loss_dice}

    def _layer(self, out: dict, targets: list[dict], num_masks: int) -> tuple[Tensor, Tensor, Tensor]:
        """(class, mask, Dice) losses of one prediction layer."""
        c = self.config
        logits = out["class_logits"]  # [B, Q, C+1]
        masks = out["mask_logits"]  # [B, Q, H, W]
        b_size, q_size, c1 = logits.shape
        if c1 != self.num_classes + 1:
            raise ValueError(f"class_logits have {c1} columns, expected {self.num_classes} classes + no object")
        device = logits.device
        target_cls = torch.full((b_size, q_size), self.num_classes, dtype=torch.long, device=device)  # [B, Q]
        batch_idx, query_idx, gold = [], [], []
        for b, t in enumerate(targets):
            labels = t["labels"].to(device=device, dtype=torch.long)  # [G]
            gt = t["masks"].to(device)  # [G, H', W']
            qi, gi = match_queries(logits[b], masks[b], labels, gt, class_weight=c.class_weight,
                                   mask_weight=c.mask_weight, dice_weight=c.dice_weight)
            target_cls[b, qi] = labels[gi]
            batch_idx.append(torch.full_like(qi, b))
            query_idx.append(qi)
            gold.append(gt[gi])
        loss_class = F.cross_entropy(logits.float().transpose(1, 2), target_cls,
                                     weight=self.class_loss_weight.to(device))

        bi, qi = torch.cat(batch_idx), torch.cat(query_idx)  # [N] each
        if bi.numel() == 0:
            # no gold segment anywhere in the batch: zero mask losses that keep the graph connected
            zero = masks.sum() * 0.0
            return loss_class, zero, zero
        pred = masks[bi, qi].float()  # [N, H, W]
        tgt = torch.cat(gold).float()  # [N, H', W']
        if pred.shape[-2:] != tgt.shape[-2:]:
            pred = F.interpolate(pred[:, None], size=tgt.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        loss_mask = F.binary_cross_entropy_with_logits(pred, tgt, reduction="none").flatten(1).mean(-1).sum() / num_masks
        loss_dice = dice_loss(pred, tgt).sum() / num_masks
        return loss_class, loss_mask, loss_dice
