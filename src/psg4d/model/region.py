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
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from psg4d.errors import ConfigError
from psg4d.model.tokens import OBJ_TOKEN

if TYPE_CHECKING:  # annotations only
    from psg4d.model.encoder import EncoderOutput
    from psg4d.model.sam2_tubes import FrameFeatures

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


class RegionFeedback:
    """Region feedback on :class:`~psg4d.model.psg4d_llm.PSG4DModel` (a mixin: the model's
    ``region_encoder``, ``decode_tubes``, ``mask_features``, ``llm``, ``embed`` and ``config`` are its own)."""

    def region_embeddings(self, dense: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """``dense [T, C, h, w]`` (one clip's scene-encoder maps), ``masks [N, T, H, W]`` -> the N
        region inputs ``[N, H_llm]`` (:mod:`psg4d.model.region`)."""
        return self.region_encoder(pool_regions(dense, masks))

    def decoded_masks(self, features: FrameFeatures | torch.Tensor, obj_hidden: torch.Tensor) -> torch.Tensor:
        """The binary tubes ``[N, T, h, w]`` that ``obj_hidden [N, H]`` decodes, as the predictor
        thresholds them (logit > 0)."""
        return self.decode_tubes(features, obj_hidden)[0] > 0

    def teacher_regions(self, enc: EncoderOutput, rgb: torch.Tensor, ids: torch.Tensor, attention: torch.Tensor,
                        visual: torch.Tensor, mask_targets: list[torch.Tensor] | None,
                        mask_valid: list[torch.Tensor] | None) -> torch.Tensor | None:
        """The embeddings ``[K, H]`` of the K region positions of ``ids [B, L']`` (None without region
        feedback). Gold tubes (``mask_targets``, B x ``[N_b, T, S, S]``; an object without a tube is
        empty) in a share of training batches (``model.region.gold_prob``, after its ramp) and at
        validation; otherwise the tubes the ``[Obj]`` hidden states decode, from a first pass
        without gradient whose regions are the gold ones (empty where there is no gold)."""
        if self.region_encoder is None:
            return None
        n_obj = (ids == self.ids.obj).sum(1).tolist()  # [B] regions per sample
        dev = enc.dense.device
        gold = None
        if mask_targets is not None:
            gold = []
            for b, m in enumerate(mask_targets):
                m = m.to(dev)
                if mask_valid is not None:
                    m = m & mask_valid[b].to(dev).view(-1, *([1] * (m.dim() - 1)))
                gold.append(m)
        use_gold = gold is not None
        if self.training:
            share = self.config.region.gold_share(int(self.region_forwards))
            self.region_forwards += 1
            use_gold = use_gold and bool(torch.rand(()) < share)

        def embed_all(masks: list[torch.Tensor | None]) -> torch.Tensor:
            parts = []
            for b, n in enumerate(n_obj):
                m = masks[b]
                if m is None:
                    m = torch.zeros(n, enc.dense.shape[1], 1, 1, device=dev)
                if m.shape[0] != n:
                    raise ValueError(f"sample {b}: {n} {OBJ_TOKEN} tokens but {m.shape[0]} region tubes")
                parts.append(self.region_embeddings(enc.dense[b], m))
            return torch.cat(parts) if parts else visual.new_zeros(0, visual.shape[-1])

        if use_gold:
            return embed_all(gold)
        with torch.no_grad():
            first = embed_all(gold if gold is not None else [None] * len(n_obj))
            hidden = self.llm(inputs_embeds=self.embed(ids, visual, first), attention_mask=attention,
                              output_hidden_states=True).hidden_states[-1]
            decoded: list[torch.Tensor | None] = []
            for b, n in enumerate(n_obj):
                pos = torch.nonzero(ids[b] == self.ids.obj).flatten()
                decoded.append(self.decoded_masks(self.mask_features(rgb[b], enc.dense[b].detach()), hidden[b, pos])
                               if n else None)
        return embed_all(decoded)
