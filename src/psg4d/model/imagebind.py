"""ImageBind vision and depth trunks, and loading of ``imagebind_huge.pth``.

The trunks reproduce ImageBind's layout (Girdhar et al., CVPR 2023) so the
released weights load by key renaming only:

- vision: a Conv3d patch stem over a 2-frame clip (an image is repeated to
  two frames, ImageBind's ``PadIm2Video(repeat)``), kernel ``(2, 14, 14)``,
  no bias; a CLS token; learned position embedding; a pre-transformer
  LayerNorm; pre-norm blocks (``nn.MultiheadAttention``, GELU MLP x4, LayerNorm
  eps 1e-6).
- depth: a Conv2d 16x16 patch stem on 1-channel disparity followed by a
  LayerNorm; CLS token, position embedding; blocks whose attention has
  ``add_bias_kv``; no pre-transformer LayerNorm. Its input must be the
  Omnivore-normalised stereo disparity it was trained on (the encoder's
  ``omnivore_disparity`` depth scheme, which ``EncoderConfig.full`` selects).

``tests/test_model_vision_imagebind_official.py`` checks both trunks and heads
against Meta's own model code with the same random weights.

The trunks return the patch tokens (CLS dropped) as a map ``[B, E, h, w]``.
ImageBind's modality *heads* (LayerNorm + bias-free Linear into the joint
1024-d space) become the encoder's per-branch ``norm``/``proj``; applied to
every patch token they put both modalities' patch features in one space.

Sizes are an explicit table (:data:`IMAGEBIND_SIZES`): ``huge`` is the
released model, ``test`` the same layout at toy width for tests.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from psg4d.errors import CheckpointError, ConfigError
from psg4d.model.provenance import mark_pretrained

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrunkSize:
    embed_dim: int
    num_blocks: int
    num_heads: int
    patch: int
    image_size: int  # the size the position embedding is stored for


@dataclass(frozen=True)
class ImageBindSize:
    vision: TrunkSize
    depth: TrunkSize
    out_dim: int  # joint embedding width (the heads' output)


IMAGEBIND_SIZES: dict[str, ImageBindSize] = {
    "huge": ImageBindSize(
        vision=TrunkSize(embed_dim=1280, num_blocks=32, num_heads=16, patch=14, image_size=224),
        depth=TrunkSize(embed_dim=384, num_blocks=12, num_heads=8, patch=16, image_size=224),
        out_dim=1024,
    ),
    "test": ImageBindSize(
        vision=TrunkSize(embed_dim=32, num_blocks=2, num_heads=4, patch=14, image_size=56),
        depth=TrunkSize(embed_dim=16, num_blocks=2, num_heads=2, patch=16, image_size=64),
        out_dim=24,
    ),
}


def imagebind_size(name: str) -> ImageBindSize:
    if name not in IMAGEBIND_SIZES:
        raise ConfigError(f"encoder.imagebind_size: unknown size {name!r}; options: {sorted(IMAGEBIND_SIZES)}")
    return IMAGEBIND_SIZES[name]


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    """ImageBind's ``BlockWithMasking`` without drop-path/layer-scale (both off in -Huge)."""

    def __init__(self, *, dim: int, heads: int, add_bias_kv: bool):
        super().__init__()
        self.norm_1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.MultiheadAttention(dim, heads, bias=True, add_bias_kv=add_bias_kv, batch_first=True)
        self.norm_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, L, E]
        h = self.norm_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm_2(x))


class ImageBindTrunk(nn.Module):
    """One ImageBind modality trunk: ``[B, C, H, W] -> [B, E, H/p, W/p]``."""

    def __init__(self, *, modality: str, size: TrunkSize):
        super().__init__()
        if modality not in ("vision", "depth"):
            raise ConfigError(f"ImageBind trunk modality must be 'vision' or 'depth', got {modality!r}")
        e = size.embed_dim
        self.modality = modality
        self.width = e
        self.stride = size.patch
        self.in_chans = 3 if modality == "vision" else 1
        if modality == "vision":
            self.patch_embed: nn.Module = nn.Conv3d(3, e, kernel_size=(2, size.patch, size.patch), stride=(2, size.patch, size.patch), bias=False)
            self.stem_norm: nn.Module = nn.Identity()
            self.pre_norm: nn.Module = nn.LayerNorm(e, eps=1e-6)
        else:
            self.patch_embed = nn.Conv2d(1, e, kernel_size=size.patch, stride=size.patch, bias=False)
            self.stem_norm = nn.LayerNorm(e)
            self.pre_norm = nn.Identity()
        grid = size.image_size // size.patch
        self.cls_token = nn.Parameter(torch.zeros(1, 1, e))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, e))
        # ImageBind's OpenCLIP-style init: N(0, 1/sqrt(E)).
        nn.init.normal_(self.cls_token, std=e**-0.5)
        nn.init.normal_(self.pos_embed, std=e**-0.5)
        self.blocks = nn.ModuleList(
            _Block(dim=e, heads=size.num_heads, add_bias_kv=modality == "depth") for _ in range(size.num_blocks)
        )

    def _pos(self, h: int, w: int) -> torch.Tensor:
        """Position embedding for an ``h x w`` grid (bicubic resize of the stored square grid)."""
        cls, grid = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        n = int(math.isqrt(grid.shape[1]))
        if (h, w) == (n, n):
            return self.pos_embed
        g = grid.reshape(1, n, n, -1).permute(0, 3, 1, 2).float()
        g = F.interpolate(g, size=(h, w), mode="bicubic", align_corners=False)
        g = g.permute(0, 2, 3, 1).reshape(1, h * w, -1).to(grid.dtype)
        return torch.cat([cls, g], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, C, H, W]
        if self.modality == "vision":
            x = x.unsqueeze(2).expand(-1, -1, 2, -1, -1)  # [B, 3, 2, H, W]: image as a 2-frame clip
            f = self.patch_embed(x).squeeze(2)  # [B, E, h, w]
        else:
            f = self.patch_embed(x)  # [B, E, h, w]
        b, e, h, w = f.shape
        t = self.stem_norm(f.flatten(2).transpose(1, 2))  # [B, h*w, E]
        t = torch.cat([self.cls_token.expand(b, -1, -1), t], dim=1) + self._pos(h, w)
        t = self.pre_norm(t)
        for blk in self.blocks:
            t = blk(t)
        return t[:, 1:].transpose(1, 2).reshape(b, e, h, w)


def build_imagebind_trunk(modality: str, *, size: str = "huge") -> ImageBindTrunk:
    spec = imagebind_size(size)
    return ImageBindTrunk(modality=modality, size=getattr(spec, modality))


# ---------------------------------------------------------------- key mapping


def _trunk_key_map(modality: str, num_blocks: int, ours: str) -> dict[str, str]:
    """Our key (under ``ours``) -> ImageBind key, for one trunk and its head."""
    pre = f"modality_preprocessors.{modality}."
    trunk = f"modality_trunks.{modality}."
    head = f"modality_heads.{modality}."
    b = f"{ours}.backbone."
    m = {
        b + "cls_token": pre + "cls_token",
        b + "pos_embed": pre + "pos_embedding_helper.pos_embed",
        f"{ours}.norm.weight": head + "0.weight",
        f"{ours}.norm.bias": head + "0.bias",
        f"{ours}.proj.weight": head + "2.weight",
    }
    if modality == "vision":
        m[b + "patch_embed.weight"] = pre + "rgbt_stem.proj.1.weight"  # proj.0 is the parameter-free PadIm2Video
        m[b + "pre_norm.weight"] = trunk + "pre_transformer_layer.0.weight"
        m[b + "pre_norm.bias"] = trunk + "pre_transformer_layer.0.bias"
    else:
        m[b + "patch_embed.weight"] = pre + "depth_stem.proj.weight"
        m[b + "stem_norm.weight"] = pre + "depth_stem.norm_layer.weight"
        m[b + "stem_norm.bias"] = pre + "depth_stem.norm_layer.bias"
    attn = ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]
    if modality == "depth":
        attn += ["bias_k", "bias_v"]
    for i in range(num_blocks):
        for name in ["norm_1.weight", "norm_1.bias", "norm_2.weight", "norm_2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"] + [f"attn.{a}" for a in attn]:
            m[f"{b}blocks.{i}.{name}"] = f"{trunk}blocks.{i}.{name}"
    return m


def imagebind_key_map(encoder: nn.Module) -> dict[str, str]:
    """Encoder state-dict key -> ``imagebind_huge.pth`` key, for every ImageBind branch."""
    m: dict[str, str] = {}
    for attr, modality in (("rgb_branch", "vision"), ("depth_branch", "depth")):
        branch = getattr(encoder, attr, None)
        if branch is not None and isinstance(branch.backbone, ImageBindTrunk):
            m.update(_trunk_key_map(modality, len(branch.backbone.blocks), attr))
    return m


def load_imagebind_checkpoint(encoder: nn.Module, path: str | Path) -> list[str]:
    """Load ImageBind vision/depth trunks and heads into ``encoder``'s branches.

    Every mapped key must exist with the right shape (position embeddings are
    bicubically resized when the configured input size differs). Returns the
    checkpoint keys that were used; the other modalities' tensors are ignored.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: ImageBind checkpoint not found (imagebind_huge.pth)")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    key_map = imagebind_key_map(encoder)
    if not key_map:
        raise CheckpointError(f"{path}: the encoder has no ImageBind branch to load into")
    own = encoder.state_dict()
    missing = [theirs for theirs in key_map.values() if theirs not in sd]
    if missing:
        raise CheckpointError(f"{path}: not an ImageBind checkpoint; missing {len(missing)} keys, e.g. {missing[:4]}")
    new: dict[str, torch.Tensor] = {}
    for ours, theirs in key_map.items():
        v = sd[theirs]
        if ours.endswith("pos_embed") and v.shape != own[ours].shape and v.shape[-1] == own[ours].shape[-1]:
            v = _resize_pos_embed(v, own[ours].shape[1])
        if v.shape != own[ours].shape:
            raise CheckpointError(f"{path}: {theirs} has shape {tuple(v.shape)}, the encoder expects {tuple(own[ours].shape)}")
        new[ours] = v
    result = encoder.load_state_dict(new, strict=False)
    if result.unexpected_keys:
        raise CheckpointError(f"{path}: internal key map error, unexpected {result.unexpected_keys[:4]}")
    mark_pretrained(encoder, new, source=path)
    log.info("loaded %d ImageBind tensors from %s (%d others ignored)", len(new), path, len(sd) - len(new))
    return sorted(key_map.values())


def _resize_pos_embed(pos: torch.Tensor, tokens: int) -> torch.Tensor:
    """``[1, 1 + n*n, E] -> [1, tokens, E]`` (CLS kept, grid bicubically resized)."""
    n = int(math.isqrt(pos.shape[1] - 1))
    m = int(math.isqrt(tokens - 1))
    g = pos[:, 1:].reshape(1, n, n, -1).permute(0, 3, 1, 2).float()
    g = F.interpolate(g, size=(m, m), mode="bicubic", align_corners=False)
    return torch.cat([pos[:, :1], g.permute(0, 2, 3, 1).reshape(1, m * m, -1).to(pos.dtype)], dim=1)
