"""Spatial prompts for SAM2 (points, a box, a mask), and drawing them from a gold mask as SAM2's
training does (the ``sam2_pretrain`` stage, :meth:`psg4d.model.tube_losses.TubeObjectives.promptable_loss`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SpatialPrompts:
    """SAM2 prompts on one frame for N objects: points, a box, or a mask (one kind per call)."""

    points: torch.Tensor | None = None  # [N, P, 2] (x, y) in SAM2-input pixels
    labels: torch.Tensor | None = None  # [N, P] int: 1 positive, 0 negative
    boxes: torch.Tensor | None = None  # [N, 4] x0, y0, x1, y1 in SAM2-input pixels
    masks: torch.Tensor | None = None  # [N, 1, H, W] float in [0, 1]

    def to(self, device: torch.device) -> "SpatialPrompts":
        return SpatialPrompts(**{k: None if v is None else v.to(device) for k, v in vars(self).items()})


PROMPT_KINDS = ("points", "box", "mask")


def sample_spatial_prompts(masks: torch.Tensor, *, image_size: int, kind: str,
                           generator: torch.Generator | None = None, max_points: int = 3,
                           box_noise: float = 0.1) -> SpatialPrompts:
    """Prompts for ``masks [N, H, W]`` bool (non-empty) as SAM2's training draws them: 1 to
    ``max_points`` clicks inside the mask (a negative one outside where there is room), the
    bounding box jittered by ``box_noise`` of its size, or the mask itself. Coordinates are in
    SAM2-input pixels (``image_size``)."""
    if kind not in PROMPT_KINDS:
        raise ValueError(f"prompt kind must be one of {PROMPT_KINDS}, got {kind!r}")
    n, h, w = masks.shape
    scale = torch.tensor([image_size / w, image_size / h])
    if kind == "mask":
        return SpatialPrompts(masks=masks[:, None].float())
    if kind == "box":
        boxes = []
        for m in masks:
            ys, xs = torch.nonzero(m, as_tuple=True)
            x0, x1, y0, y1 = xs.min().float(), xs.max().float() + 1, ys.min().float(), ys.max().float() + 1
            bw, bh = x1 - x0, y1 - y0
            jitter = (torch.rand(4, generator=generator) * 2 - 1) * box_noise * torch.stack([bw, bh, bw, bh])
            box = torch.stack([x0, y0, x1, y1]) + jitter
            box = torch.stack([box[0].clamp(0, w), box[1].clamp(0, h), box[2].clamp(0, w), box[3].clamp(0, h)])
            boxes.append(box * torch.cat([scale, scale]))
        return SpatialPrompts(boxes=torch.stack(boxes))
    k = int(torch.randint(1, max_points + 1, (1,), generator=generator))
    pts = torch.zeros(n, k + 1, 2)
    labels = torch.full((n, k + 1), -1, dtype=torch.int32)  # the last slot: a negative click or padding
    for i, m in enumerate(masks):
        inside = torch.nonzero(m).flip(-1).float()  # [P, 2] (x, y)
        pick = torch.randint(0, inside.shape[0], (k,), generator=generator)
        pts[i, :k] = (inside[pick] + 0.5) * scale - 0.5
        labels[i, :k] = 1
        outside = torch.nonzero(~m).flip(-1).float()
        if outside.shape[0] and float(torch.rand((), generator=generator)) < 0.5:
            j = int(torch.randint(0, outside.shape[0], (1,), generator=generator))
            pts[i, k] = (outside[j] + 0.5) * scale - 0.5
            labels[i, k] = 0
    return SpatialPrompts(points=pts, labels=labels)
