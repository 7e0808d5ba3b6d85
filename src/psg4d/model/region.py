"""Region feedback: the tube an ``[Obj]`` decoded, read back into the LLM (NExT-Chat's loop).

With ``model.region.enabled``, every ``[Obj]`` in the scene-graph text is followed by ONE region
position whose input embedding is not a word but the object's tube, read from the scene
encoder's per-frame maps::

    subj [Obj] <region of subj> pred obj [Obj] <region of obj> 0 3 ; ...

so the predicate and the span that follow are conditioned on what that object does across the
frames. The tube is the one the ``[Obj]``'s own hidden state decodes (at inference, and for a share
of training batches, detached); in training it is otherwise the gold tube.

Per model frame the region's features are (:func:`pool_regions`) the maps' mean under the mask,
the mask's area share, its centroid and whether the object is present at all; the frames are
kept in order (concatenated, not averaged) so the LLM can read motion and appearing/vanishing
(:class:`RegionEncoder`).

Region positions have no token id: in an id sequence a region is a negative number ``-(1 + k)``,
``k`` indexing a table of region embeddings (:func:`region_id`, :func:`region_index`). Distinct
objects thus have distinct "tokens", so code that shares work between equal id prefixes (the
KV-cache reuse and the packed scorer of :mod:`psg4d.model.generation`) never confuses two objects;
a region position is given, never predicted, so it is never a scored target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from psg4d.errors import ConfigError

# per-frame geometry appended to the pooled features: area share, centroid x, centroid y, present
GEOMETRY = 4


@dataclass
class RegionConfig:
    enabled: bool = False
    # per-frame width before the frames are concatenated and projected to the LLM's width
    dim: int = 32
    # Training: the share of batches whose region positions hold the GOLD tubes; the others hold
    # the tubes the model's own [Obj] states decode (detached), as at inference.
    gold_prob: float = 0.5
    # Training forwards over which that share falls linearly from 1 to gold_prob (0: gold_prob
    # from the start): early [Obj] states decode nothing worth reading.
    gold_ramp: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.gold_prob <= 1.0 or self.gold_ramp < 0 or self.dim < 1:
            raise ConfigError(f"model.region: gold_prob ({self.gold_prob}) must be in [0, 1], gold_ramp "
                              f"({self.gold_ramp}) >= 0 and dim ({self.dim}) >= 1")

    def gold_share(self, forwards: int) -> float:
        """The share of gold batches after ``forwards`` training forwards."""
        if self.gold_ramp <= 0 or forwards >= self.gold_ramp:
            return self.gold_prob
        return 1.0 - (1.0 - self.gold_prob) * forwards / self.gold_ramp


def region_id(k: int) -> int:
    """The id that stands for region ``k`` of a region table in an id sequence."""
    return -(1 + k)


def region_index(ids: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`region_id` (meaningful where ``ids < 0``)."""
    return -ids - 1


def insert_after(ids: Sequence[int], marker: int, fill: Sequence[int]) -> list[int]:
    """``ids`` with ``fill[i]`` inserted right after the i-th occurrence of ``marker`` (occurrences
    past ``len(fill)`` get nothing)."""
    out, k = [], 0
    for t in ids:
        out.append(t)
        if t == marker and k < len(fill):
            out.append(fill[k])
            k += 1
    return out


def pool_regions(dense: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``dense [T, C, h, w]`` maps, ``masks [N, T, H, W]`` (bool or in [0, 1], any size) ->
    per-frame region features ``[N, T, C + 4]``: the maps' mean under the mask, its area share,
    centroid (x, y in [0, 1]; 0.5 where absent) and presence (area > 0)."""
    t, c, h, w = dense.shape
    n = masks.shape[0]
    if masks.shape[1] != t:
        raise ValueError(f"masks cover {masks.shape[1]} frames, the maps {t}")
    if n == 0:
        return dense.new_zeros(0, t, c + GEOMETRY)
    weight = F.adaptive_avg_pool2d(masks.reshape(n * t, 1, *masks.shape[-2:]).to(dense.dtype), (h, w))
    weight = weight.reshape(n, t, h * w)  # [N, T, hw] share of each cell the mask covers
    mass = weight.sum(-1, keepdim=True)  # [N, T, 1]
    pooled = torch.einsum("ntk,tck->ntc", weight, dense.reshape(t, c, h * w)) / mass.clamp(min=1e-6)
    ys = (torch.arange(h, dtype=dense.dtype, device=dense.device) + 0.5) / h
    xs = (torch.arange(w, dtype=dense.dtype, device=dense.device) + 0.5) / w
    grid_x, grid_y = xs.repeat(h), ys.repeat_interleave(w)  # [hw]
    present = (mass > 0).to(dense.dtype)
    cx = torch.where(mass > 0, (weight * grid_x).sum(-1, keepdim=True) / mass.clamp(min=1e-6), 0.5)
    cy = torch.where(mass > 0, (weight * grid_y).sum(-1, keepdim=True) / mass.clamp(min=1e-6), 0.5)
    return torch.cat([pooled, mass / (h * w), cx, cy, present], dim=-1)


class RegionEncoder(nn.Module):
    """Per-frame region features ``[N, T, C + 4]`` (``T <= frames``) -> one LLM input embedding
    ``[N, H]``: a per-frame projection, then the frames concatenated in time order (missing
    trailing frames are zeros) and projected to the LLM's width."""

    def __init__(self, *, in_dim: int, dim: int, frames: int, hidden: int):
        super().__init__()
        self.frames = frames
        self.frame = nn.Sequential(nn.Linear(in_dim + GEOMETRY, dim), nn.GELU())
        self.out = nn.Linear(frames * dim, hidden)
        # start at the scale of the LLM's word embeddings, not of a unit-variance projection
        nn.init.normal_(self.out.weight, std=0.02 / math.sqrt(max(1.0, frames * dim / hidden)))
        nn.init.zeros_(self.out.bias)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        n, t, _ = feats.shape
        if t > self.frames:
            raise ValueError(f"{t} frames for a region encoder of {self.frames}")
        per_frame = self.frame(feats.to(self.out.weight.dtype))  # [N, T, d]
        if t < self.frames:
            per_frame = F.pad(per_frame, (0, 0, 0, self.frames - t))
        return self.out(per_frame.reshape(n, -1))  # [N, H]
