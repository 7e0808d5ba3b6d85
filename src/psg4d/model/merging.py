"""Spatio-temporal token merging: fused patch features -> a few LLM tokens.

Two steps:

1. *Spatial pooling*: each frame's ``h x w`` patch grid is average-pooled to a
   coarse ``grid x grid`` layout and gets a learned spatial position embedding.
2. *Temporal merging* (only when ``T * grid**2`` exceeds ``max_tokens``):
   ToMe-style bipartite soft matching (Bolya et al., 2023). Tokens are laid out
   cell-major (for each grid cell, its frames in time order) and split
   alternately into two sets, so each cell's odd frames face its even frames;
   each token of the first set is matched to its most similar (cosine) token
   of the second and the ``r`` most similar pairs are merged by size-weighted
   averaging. The layout order is kept between rounds, which repeat until the
   budget is met. Static content (background seen in many frames) therefore
   collapses first, and frames where things change keep their own tokens.

Every token carries the size-weighted mean frame index of what it absorbed
(``token_frames``). After merging, tokens are put back in time order and a
time embedding (sinusoid of that fractional frame index through a learned
linear map) is added, so the LLM can tell *when* each token happened, which it
needs to emit the frame indices of relation spans.

3. *Frame tokens* (``frame_grid > 0``): merging keeps what changes but mixes
   frames, so the order of events is only implicit in it. Each frame also gets
   ``frame_grid**2`` tokens of its own (its map average-pooled to that grid,
   with their own spatial and time embeddings), appended after the merged
   scene tokens in time order: the clip's frames, one after another.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoid(pos: torch.Tensor, dim: int, base: float = 10000.0) -> torch.Tensor:
    """Sine/cosine embedding of (possibly fractional) positions: ``[...] -> [..., dim]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(base) * torch.arange(half, device=pos.device, dtype=torch.float32) / half)
    ang = pos.float().unsqueeze(-1) * freqs  # [..., half]
    emb = torch.cat([ang.sin(), ang.cos()], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def bipartite_merge(
    x: torch.Tensor, size: torch.Tensor, frames: torch.Tensor, r: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One round of ToMe bipartite soft matching that removes ``r`` tokens.

    ``x [B, M, D]`` (mean features), ``size [B, M]`` (tokens absorbed so far),
    ``frames [B, M]`` (mean frame index). Even positions form set A, odd ones
    set B; merged A tokens disappear into their B partner. Returns the same
    three with ``M - r`` tokens in the original relative order. ``r`` is
    clipped to the size of set A.
    """
    m = x.shape[1]
    a_pos = torch.arange(0, m, 2, device=x.device)
    b_pos = torch.arange(1, m, 2, device=x.device)
    r = min(r, a_pos.numel()) if b_pos.numel() else 0
    if r <= 0:
        return x, size, frames
    a_x, b_x = x[:, 0::2], x[:, 1::2]  # [B, Ma, D], [B, Mb, D]
    with torch.no_grad():
        sim = F.normalize(a_x, dim=-1) @ F.normalize(b_x, dim=-1).transpose(1, 2)  # [B, Ma, Mb]
        best, best_idx = sim.max(dim=-1)  # [B, Ma]
        edge_order = best.argsort(dim=-1, descending=True)
        merged = edge_order[:, :r]  # [B, r] indices into A
        kept = edge_order[:, r:].sort(dim=-1).values  # [B, Ma - r], in layout order
        dst = best_idx.gather(1, merged)  # [B, r] indices into B

    a_size, b_size = size[:, 0::2], size[:, 1::2]
    a_fr, b_fr = frames[:, 0::2], frames[:, 1::2]
    d = x.shape[-1]

    def take(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        if t.dim() == 3:
            return t.gather(1, idx.unsqueeze(-1).expand(-1, -1, t.shape[-1]))
        return t.gather(1, idx)

    m_size = take(a_size, merged)  # [B, r]
    # Merge as size-weighted sums, then renormalise by the new sizes.
    b_sum = (b_x * b_size.unsqueeze(-1)).scatter_add(
        1, dst.unsqueeze(-1).expand(-1, -1, d), take(a_x, merged) * m_size.unsqueeze(-1)
    )
    b_fr_sum = (b_fr * b_size).scatter_add(1, dst, take(a_fr, merged) * m_size)
    b_size_new = b_size.scatter_add(1, dst, m_size)
    b_x = b_sum / b_size_new.unsqueeze(-1)
    b_fr = b_fr_sum / b_size_new

    # Restore the layout order: kept A tokens and all B tokens at their old positions.
    pos = torch.cat([a_pos[kept], b_pos.unsqueeze(0).expand(x.shape[0], -1)], dim=1)  # [B, M - r]
    order = pos.argsort(dim=1)
    x = take(torch.cat([take(a_x, kept), b_x], dim=1), order)
    size = take(torch.cat([take(a_size, kept), b_size_new], dim=1), order)
    frames = take(torch.cat([take(a_fr, kept), b_fr], dim=1), order)
    return x, size, frames


class TokenMerger(nn.Module):
    """``fused [B, T, N, D]`` on an ``h x w`` grid -> ``tokens [B, N_vis, D]``.

    ``N_vis = min(T * grid**2, max_tokens) + T * frame_grid**2``; always the same
    for a given ``T``, so a batch of equal-length clips yields a dense tensor.
    """

    def __init__(self, *, dim: int, grid: int = 4, max_tokens: int = 64, frame_grid: int = 0):
        super().__init__()
        if max_tokens < 1 or grid < 1 or frame_grid < 0:
            raise ValueError(f"grid ({grid}) and max_tokens ({max_tokens}) must be positive, frame_grid "
                             f"({frame_grid}) at least 0")
        self.dim = dim
        self.grid = grid
        self.max_tokens = max_tokens
        self.spatial_pos = nn.Parameter(torch.zeros(grid * grid, dim))
        nn.init.trunc_normal_(self.spatial_pos, std=0.02)
        self.time_proj = nn.Linear(dim, dim)
        # Zero-init: a randomly projected sinusoid is as large as the content and, shared by
        # every video, makes all videos' tokens look alike; the time signal grows as it is needed.
        nn.init.zeros_(self.time_proj.weight)
        nn.init.zeros_(self.time_proj.bias)
        self.frame_grid = frame_grid
        if frame_grid:
            self.frame_pos = nn.Parameter(torch.zeros(frame_grid * frame_grid, dim))
            nn.init.trunc_normal_(self.frame_pos, std=0.02)
            # Not zero-initialised: frame tokens exist to say when, from the first step.
            self.frame_time_proj = nn.Linear(dim, dim)
            nn.init.trunc_normal_(self.frame_time_proj.weight, std=0.02)
            nn.init.zeros_(self.frame_time_proj.bias)
        self.norm = nn.LayerNorm(dim)

    def forward(self, fused: torch.Tensor, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, n, d = fused.shape
        h, w = hw
        maps = fused.reshape(b * t, h, w, d).permute(0, 3, 1, 2)  # [B*T, D, h, w]
        pooled = F.adaptive_avg_pool2d(maps, self.grid)  # [B*T, D, g, g]
        x = pooled.flatten(2).reshape(b, t, d, self.grid**2).permute(0, 3, 1, 2)  # [B, g*g, T, D]
        x = (x + self.spatial_pos[None, :, None, :]).reshape(b, -1, d)  # cell-major [B, g*g*T, D]
        frames = torch.arange(t, device=fused.device, dtype=torch.float32).repeat(self.grid**2)
        frames = frames.unsqueeze(0).expand(b, -1).contiguous()  # [B, g*g*T]
        size = torch.ones_like(frames)
        while x.shape[1] > self.max_tokens:
            # At most a quarter per round: one big round would be forced to merge every
            # token of set A, however dissimilar; smaller rounds re-match after each merge.
            r = min(x.shape[1] - self.max_tokens, max(1, x.shape[1] // 4))
            x, size, frames = bipartite_merge(x, size, frames, r)
        order = frames.argsort(dim=1, stable=True)
        x = x.gather(1, order.unsqueeze(-1).expand_as(x))
        frames = frames.gather(1, order)
        x = x + self.time_proj(sinusoid(frames, d).to(x.dtype))
        if self.frame_grid:
            g = self.frame_grid
            per_frame = F.adaptive_avg_pool2d(maps, g).flatten(2).transpose(1, 2)  # [B*T, g*g, D]
            steps = torch.arange(t, device=fused.device, dtype=torch.float32)  # [T]
            when = self.frame_time_proj(sinusoid(steps, d).to(x.dtype))  # [T, D]
            ft = per_frame.reshape(b, t, g * g, d) + self.frame_pos + when[None, :, None, :]
            x = torch.cat([x, ft.reshape(b, t * g * g, d)], dim=1)  # [B, N_merged + T*g*g, D]
            frames = torch.cat([frames, steps.repeat_interleave(g * g).unsqueeze(0).expand(b, -1)], dim=1)
        return self.norm(x), frames  # [B, N_vis, D], [B, N_vis]
