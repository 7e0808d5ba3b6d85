"""Scene encoder: RGB-D video -> visual tokens for the LLM + dense maps for masks.

Pipeline per clip ``rgb [B, T, 3, H, W]`` (float in [0, 1]) and optional
``depth [B, T, 1, H, W]`` (metres):

1. Normalisation inside the encoder, so callers pass raw values:
   RGB with the mean/std the RGB backbone's weights expect (ImageNet for
   ``tiny``, TF-Lite's 127/128 for ``efficientnet_lite0``, CLIP's for
   ``imagebind``; see ``psg4d.model.backbones.BACKBONES``); depth turned into *disparity*
   ``1 / max(depth, depth_min)`` in 1/m (invalid depth: ``<= 0`` or non-finite,
   becomes disparity 0, i.e. "infinitely far / unknown"), then standardised as
   ``(disparity - depth_mean) / depth_std``. Disparity rather than depth keeps
   near surfaces (where interactions happen) well resolved and bounds the input;
   the defaults (mean 0.5, std 0.5 per metre) fit indoor scenes of 0.5-5 m.
   Frames are resized to ``image_size x image_size`` (bilinear, antialiased).
2. One backbone per modality (ImageBind-style), each followed by a
   ``LayerNorm + Linear`` head into the shared width ``D``.
3. :class:`~psg4d.model.fusion.GatedFusion` per frame (SA-Gate style). RGB-only
   input (``depth=None``, ``depth_feats=None``) uses the RGB features alone;
   ``depth_feats`` (e.g. from the transfer's depth-feature estimator) replaces
   the depth branch when given. An encoder built with ``use_depth=False`` has
   no depth branch and ignores ``depth``.
4. :class:`~psg4d.model.merging.TokenMerger`: spatial pooling + ToMe-style
   temporal merging with a time embedding -> ``tokens [B, N_vis, D]``.

The fused per-frame features are also returned as dense maps
``[B, T, D, h, w]`` for the mask decoder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from psg4d.errors import ConfigError
from psg4d.model.backbones import BACKBONES, IMAGENET_MEAN, IMAGENET_STD, build_backbone
from psg4d.model.fusion import GatedFusion
from psg4d.model.merging import TokenMerger

log = logging.getLogger(__name__)



@dataclass
class EncoderConfig:
    """Scene-encoder settings; defaults are the tiny CPU model (64x64 input, D=64)."""

    backbone: str = "tiny"
    # None: the depth branch uses the same backbone kind as the RGB branch.
    depth_backbone: str | None = None
    use_depth: bool = True
    image_size: int = 64
    dim: int = 64
    # tiny backbone
    tiny_width: int = 64
    tiny_depth: int = 2
    tiny_heads: int = 4
    # imagebind backbone: "huge" (the released model) or "test" (same layout, small)
    imagebind_size: str = "huge"
    # pretrained weights: efficientnet_lite0 defaults to the pip package's file;
    # imagebind needs weights_path to imagebind_huge.pth.
    pretrained: bool = False
    weights_path: str | None = None
    # depth normalisation (see module docstring)
    depth_min: float = 0.1
    depth_mean: float = 0.5
    depth_std: float = 0.5
    # token merging
    merge_grid: int = 4
    max_tokens: int = 64
    fusion_reduction: int = 4

    @classmethod
    def tiny(cls) -> "EncoderConfig":
        return cls()

    @classmethod
    def efficientnet_lite0(cls) -> "EncoderConfig":
        """EfficientNet-Lite0 branches with ImageNet weights; 128x128 input -> 8x8 maps."""
        return cls(backbone="efficientnet_lite0", pretrained=True, image_size=128, dim=256, merge_grid=4, max_tokens=128)

    @classmethod
    def full(cls) -> "EncoderConfig":
        """ImageBind-Huge branches (D = 1024, ImageBind's joint width), 224x224 input."""
        return cls(
            backbone="imagebind",
            pretrained=True,
            weights_path="checkpoints/imagebind_huge.pth",
            image_size=224,
            dim=1024,
            merge_grid=8,
            max_tokens=256,
        )

    @classmethod
    def preset(cls, name: str) -> "EncoderConfig":
        presets = {"tiny": cls.tiny, "efficientnet_lite0": cls.efficientnet_lite0, "full": cls.full}
        if name not in presets:
            raise ConfigError(f"unknown encoder preset {name!r}; options: {sorted(presets)}")
        return presets[name]()


@dataclass
class EncoderOutput:
    tokens: torch.Tensor  # [B, N_vis, D] merged visual tokens for the LLM
    dense: torch.Tensor  # [B, T, D, h, w] fused per-frame maps for the mask decoder
    rgb_feats: torch.Tensor  # [B, T, N, D] RGB-branch patch features
    depth_feats: torch.Tensor | None  # [B, T, N, D] depth-branch (or supplied) features
    fused: torch.Tensor  # [B, T, N, D]
    token_frames: torch.Tensor | None = None  # [B, N_vis] mean frame index per token


class Branch(nn.Module):
    """Backbone + ``LayerNorm + Linear`` head into the shared width.

    The head has ImageBind's modality-head layout (LayerNorm eps 1e-6, Linear
    without bias), so the released heads load directly for ``imagebind``.
    """

    def __init__(self, *, backbone: nn.Module, dim: int):
        super().__init__()
        self.backbone = backbone
        self.norm = nn.LayerNorm(backbone.width, eps=1e-6)
        self.proj = nn.Linear(backbone.width, dim, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:  # x: [B', C, H, W]
        f = self.backbone(x)  # [B', W, h, w]
        h, w = f.shape[-2:]
        t = f.flatten(2).transpose(1, 2)  # [B', h*w, W]
        return self.proj(self.norm(t)), (h, w)  # [B', N, D]


class SceneEncoder(nn.Module):
    """See the module docstring. Submodules are injected; use :func:`build_encoder`."""

    def __init__(
        self,
        *,
        rgb_branch: Branch,
        depth_branch: Branch | None,
        fusion: GatedFusion,
        merger: TokenMerger,
        image_size: int,
        rgb_mean: tuple[float, float, float] = IMAGENET_MEAN,
        rgb_std: tuple[float, float, float] = IMAGENET_STD,
        depth_min: float = 0.1,
        depth_mean: float = 0.5,
        depth_std: float = 0.5,
    ):
        super().__init__()
        self.rgb_branch = rgb_branch
        self.depth_branch = depth_branch
        self.fusion = fusion
        self.merger = merger
        self.image_size = image_size
        self.depth_min = depth_min
        self.depth_mean = depth_mean
        self.depth_std = depth_std
        self.register_buffer("rgb_mean", torch.tensor(rgb_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("rgb_std", torch.tensor(rgb_std).view(1, 3, 1, 1), persistent=False)

    @property
    def dim(self) -> int:
        return self.merger.dim

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        s = self.image_size
        if x.shape[-2:] == (s, s):
            return x
        return F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)

    def normalize_rgb(self, rgb: torch.Tensor) -> torch.Tensor:
        """``[B', 3, H, W]`` in [0, 1] -> resized, standardised for the RGB backbone."""
        x = (self._resize(rgb.float()) - self.rgb_mean.float()) / self.rgb_std.float()
        return x.to(self._dtype())

    def normalize_depth(self, depth: torch.Tensor) -> torch.Tensor:
        """``[B', 1, H, W]`` metres -> resized, standardised disparity (see module docstring)."""
        depth = depth.float()
        valid = torch.isfinite(depth) & (depth > 0)
        disp = torch.where(valid, 1.0 / depth.clamp(min=self.depth_min), torch.zeros_like(depth))
        return ((self._resize(disp) - self.depth_mean) / self.depth_std).to(self._dtype())

    def _dtype(self) -> torch.dtype:
        # Normalise in float32 (disparity and small stds), then feed the backbone in its own dtype.
        return self.rgb_branch.proj.weight.dtype

    def forward(
        self,
        rgb: torch.Tensor,
        depth: torch.Tensor | None = None,
        *,
        depth_feats: torch.Tensor | None = None,
    ) -> EncoderOutput:
        if rgb.dim() != 5 or rgb.shape[2] != 3:
            raise ValueError(f"rgb must be [B, T, 3, H, W], got {tuple(rgb.shape)}")
        b, t = rgb.shape[:2]
        rgb_tok, (h, w) = self.rgb_branch(self.normalize_rgb(rgb.flatten(0, 1)))  # [B*T, N, D]
        n, d = rgb_tok.shape[1:]

        depth_tok: torch.Tensor | None = None
        if depth_feats is not None:
            if depth_feats.shape != (b, t, n, d):
                raise ValueError(f"depth_feats must be {(b, t, n, d)}, got {tuple(depth_feats.shape)}")
            depth_tok = depth_feats.flatten(0, 1).to(rgb_tok.dtype)
        elif depth is not None and self.depth_branch is not None:
            if depth.dim() != 5 or depth.shape[:3] != (b, t, 1):
                raise ValueError(f"depth must be [B, T, 1, H, W] matching rgb, got {tuple(depth.shape)}")
            depth_tok, (dh, dw) = self.depth_branch(self.normalize_depth(depth.flatten(0, 1)))
            if (dh, dw) != (h, w):
                # Branches with different patch sizes (ImageBind: 14 vs 16) meet on the RGB grid.
                grid = depth_tok.transpose(1, 2).reshape(-1, d, dh, dw)
                grid = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)
                depth_tok = grid.flatten(2).transpose(1, 2)

        fused = self.fusion(rgb_tok, depth_tok)  # [B*T, N, D]
        fused_btnd = fused.reshape(b, t, n, d)
        tokens, frames = self.merger(fused_btnd, (h, w))
        dense = fused_btnd.reshape(b, t, h, w, d).permute(0, 1, 4, 2, 3)  # [B, T, D, h, w]
        return EncoderOutput(
            tokens=tokens,
            dense=dense,
            rgb_feats=rgb_tok.reshape(b, t, n, d),
            depth_feats=None if depth_tok is None else depth_tok.reshape(b, t, n, d),
            fused=fused_btnd,
            token_frames=frames,
        )


def build_encoder(cfg: EncoderConfig) -> SceneEncoder:
    """Build the encoder (and load pretrained weights where configured)."""
    for name in (cfg.backbone, cfg.depth_backbone):
        if name is not None and name not in BACKBONES:
            raise ConfigError(f"encoder.backbone: unknown backbone {name!r}; options: {sorted(BACKBONES)}")
    rgb = Branch(backbone=build_backbone(cfg.backbone, in_chans=3, cfg=cfg), dim=cfg.dim)
    depth = None
    if cfg.use_depth:
        depth_name = cfg.depth_backbone or cfg.backbone
        depth = Branch(backbone=build_backbone(depth_name, in_chans=1, cfg=cfg), dim=cfg.dim)
    encoder = SceneEncoder(
        rgb_branch=rgb,
        depth_branch=depth,
        fusion=GatedFusion(dim=cfg.dim, reduction=cfg.fusion_reduction),
        merger=TokenMerger(dim=cfg.dim, grid=cfg.merge_grid, max_tokens=cfg.max_tokens),
        image_size=cfg.image_size,
        rgb_mean=BACKBONES[cfg.backbone].rgb_mean,
        rgb_std=BACKBONES[cfg.backbone].rgb_std,
        depth_min=cfg.depth_min,
        depth_mean=cfg.depth_mean,
        depth_std=cfg.depth_std,
    )
    if cfg.backbone == "imagebind" and cfg.pretrained:
        from psg4d.model.imagebind import load_imagebind_checkpoint

        if not cfg.weights_path:
            raise ConfigError("encoder.weights_path: backbone 'imagebind' with pretrained=true needs imagebind_huge.pth")
        load_imagebind_checkpoint(encoder, cfg.weights_path)
    log.info(
        "scene encoder: %s RGB / %s depth backbone, D=%d, %dx%d input, %d parameters",
        cfg.backbone,
        (cfg.depth_backbone or cfg.backbone) if cfg.use_depth else "no",
        cfg.dim,
        cfg.image_size,
        cfg.image_size,
        sum(p.numel() for p in encoder.parameters()),
    )
    return encoder

