"""Per-frame RGB/depth aggregation with separation-and-aggregation gates.

Follows the gate design of SA-Gate (Chen et al., ECCV 2020), on token features:

1. *Cross-modal recalibration*: global descriptors of both modalities (mean over
   the patches) feed a small MLP that yields one channel gate per modality; each
   modality then takes in the other's features filtered by that gate. The gates
   come from both modalities, so a noisy depth map can be gated out by evidence
   from the RGB side and vice versa.
2. *Aggregation*: a 1x1 projection of the two recalibrated maps gives one score
   per modality and location; a softmax over the two modalities turns them into
   a per-location mixing weight.

RGB-only input (no depth map and no estimated depth features) takes the
documented fallback path: the RGB features alone go through the same output
norm, so the fused features keep their scale and the LLM sees the same kind of
tokens, only without the depth evidence.
"""

from __future__ import annotations

import torch
from torch import nn


class GatedTokenFusion(nn.Module):
    """Fuse ``rgb`` and ``depth`` token features ``[B, N, D]`` into ``[B, N, D]`` (the 4D-LLM's encoder).

    Not :class:`psg4d.baseline.segmenter.GatedFusion`, the pipeline baseline's gate on conv
    feature maps ``[B, C, H, W]``: the same SA-Gate idea on a different representation.
    """

    def __init__(self, *, dim: int, reduction: int = 4):
        super().__init__()
        hidden = max(dim // reduction, 8)
        # Channel gates for both modalities from both global descriptors.
        self.channel_gate = nn.Sequential(
            nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Linear(hidden, 2 * dim), nn.Sigmoid()
        )
        # Per-location scores (one per modality) from the concatenated recalibrated features.
        self.spatial_gate = nn.Linear(2 * dim, 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor | None) -> torch.Tensor:
        if depth is None:
            return self.norm(rgb)  # [B, N, D]
        desc = torch.cat([rgb.mean(dim=1), depth.mean(dim=1)], dim=-1)  # [B, 2D]
        g_rgb, g_depth = self.channel_gate(desc).unsqueeze(1).chunk(2, dim=-1)  # [B, 1, D] each
        rgb_rec = rgb + g_depth * depth  # depth evidence admitted into the RGB stream
        depth_rec = depth + g_rgb * rgb
        weights = self.spatial_gate(torch.cat([rgb_rec, depth_rec], dim=-1)).softmax(dim=-1)  # [B, N, 2]
        fused = weights[..., :1] * rgb_rec + weights[..., 1:] * depth_rec  # [B, N, D]
        return self.norm(fused)
