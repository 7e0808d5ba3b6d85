"""Scene encoder: RGB-D video -> visual tokens for the LLM + dense maps for masks.

Pipeline per clip ``rgb [B, T, 3, H, W]`` (float in [0, 1]) and optional
``depth [B, T, 1, H, W]`` (metres):

1. Normalisation inside the encoder, so callers pass raw values:
   RGB with the mean/std the RGB backbone's weights expect (ImageNet for
   ``tiny``, TF-Lite's 127/128 for ``efficientnet_lite0``, CLIP's for
   ``imagebind``; see ``psg4d.model.backbones.BACKBONES``). Depth becomes
   *disparity* by one of the named schemes of :data:`DEPTH_NORMS`
   (``EncoderConfig.depth_norm``): disparity rather than depth keeps near
   surfaces (where interactions happen) well resolved and bounds the input.

   - ``inverse_metres`` (tiny and EfficientNet-Lite0 models, trained here):
     ``1 / max(depth, 0.1)`` in 1/m, standardised as ``(x - 0.5) / 0.5``, which
     fits indoor scenes of 0.5-5 m.
   - ``omnivore_disparity`` (ImageBind, whose depth trunk is frozen): the input
     ImageBind was trained on, Omnivore's SUN RGB-D recipe. Stereo disparity in
     pixels ``focal_px * baseline_m / depth`` (depth clipped to [0.01, 50] m),
     clamped to [0.01, 75] px, divided by 75, standardised with mean 0.0418 and
     std 0.0295. ``focal_px * baseline_m`` is the per-clip ``disparity_scale``
     (:func:`disparity_scale_of`); the focal length is in pixels of the frames
     as given, before the encoder's resize, because Omnivore resized disparity
     maps computed at the sensor's resolution without rescaling their values.

   Invalid depth (``<= 0`` or non-finite) becomes disparity 0 before the clamps,
   i.e. "infinitely far / unknown" (``omnivore_disparity`` then clamps it to
   Omnivore's floor of 0.01 px, its value for the farthest points).
   Frames are resized to ``image_size x image_size`` (bilinear, antialiased).
2. One backbone per modality (ImageBind-style), each followed by a
   ``LayerNorm + Linear`` head into the shared width ``D``.
3. :class:`~psg4d.model.fusion.GatedTokenFusion` per frame (SA-Gate style). RGB-only
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
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from psg4d.errors import ConfigError, DataError
from psg4d.model.backbones import BACKBONES, IMAGENET_MEAN, IMAGENET_STD, build_backbone
from psg4d.model.fusion import GatedTokenFusion
from psg4d.model.merging import TokenMerger

if TYPE_CHECKING:
    from psg4d.data.schema import Video4D

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DepthNorm:
    """One way of turning metric depth into the depth backbone's input (see :data:`DEPTH_NORMS`).

    ``disparity = scale / clip(depth, *depth_range)`` for valid depth (``scale``:
    the clip's ``focal_px * baseline_m`` when ``camera``, else 1), 0 for invalid
    depth; then ``clip(disparity, *disparity_range) / disparity_div``, resized to
    the input size, and standardised as ``(x - mean) / std``.
    """

    camera: bool
    depth_range: tuple[float, float]  # metres
    disparity_range: tuple[float, float]
    disparity_div: float
    mean: float
    std: float


DEPTH_NORMS: dict[str, DepthNorm] = {
    "inverse_metres": DepthNorm(
        camera=False, depth_range=(0.1, math.inf), disparity_range=(0.0, math.inf), disparity_div=1.0, mean=0.5, std=0.5
    ),
    # The depth input ImageBind's depth trunk was trained on. ImageBind's own code ships no
    # depth transform (facebookresearch/ImageBind@53680b0 imagebind/data.py has loaders for
    # vision, text, audio and video only; imagebind/models/imagebind_model.py L194-212 is the
    # 1-channel 224x224 depth stem); it follows Omnivore (facebookresearch/omnivore@1d55abd):
    # - depth -> disparity: Omnivore issue #12 (the authors' SUN RGB-D conversion):
    #   baseline_m * fx / clip(depth_m, 0.01, 50), fx from SUN RGB-D's intrinsics.txt, baseline
    #   0.075 m for Kinect v1/v2 and 0.095 m for RealSense/Xtion;
    # - omnivore/transforms.py L16-61 DepthNorm: clamp(min=0.01) (L54), clamp(max=max_depth)
    #   (L57-58), / max_depth (L60); max_depth=75 with clamping for SUN RGB-D in
    #   omnivision/config/experiments/omnivore/swin_train_in1k_k400_sun_concat.yaml L90-92;
    # - omnivore/predict.py L72-80: DepthNorm(75, clamp), Resize(224), CenterCrop(224),
    #   Normalize(mean 0.0418, std 0.0295) for the depth channel.
    "omnivore_disparity": DepthNorm(
        camera=True, depth_range=(0.01, 50.0), disparity_range=(0.01, 75.0), disparity_div=75.0, mean=0.0418, std=0.0295
    ),
}


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
    # a DEPTH_NORMS name (see the module docstring)
    depth_norm: str = "inverse_metres"
    # The camera of clips that do not give their own (used by schemes with ``camera``):
    # the Kinect v1 colour camera's fx at 640x480 (NYU Depth v2's calibration, SUN RGB-D's
    # kv1 intrinsics.txt) and the 7.5 cm baseline Omnivore used for SUN RGB-D's Kinect v1/v2
    # frames (5,787 of its 10,335, the data ImageBind's depth trunk saw): 1 m -> 38.9 px.
    default_focal_px: float = 518.857901
    default_baseline_m: float = 0.075
    # token merging
    merge_grid: int = 4
    max_tokens: int = 64
    # per-frame tokens (psg4d.model.merging): frame_grid x frame_grid of each frame beside the
    # merged ones, so the LLM sees the frames in order (0: none)
    frame_grid: int = 0
    fusion_reduction: int = 4

    def __post_init__(self) -> None:
        if self.depth_norm not in DEPTH_NORMS:
            raise ConfigError(f"encoder.depth_norm: unknown scheme {self.depth_norm!r}; options: {sorted(DEPTH_NORMS)}")
        for name in ("default_focal_px", "default_baseline_m"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ConfigError(f"encoder.{name} must be a positive number, got {v}")

    @property
    def default_disparity_scale(self) -> float:
        """``focal_px * baseline_m`` of the default camera."""
        return self.default_focal_px * self.default_baseline_m

    @classmethod
    def efficientnet_lite0(cls) -> "EncoderConfig":
        """EfficientNet-Lite0 branches with ImageNet weights; 128x128 input -> 8x8 maps."""
        return cls(backbone="efficientnet_lite0", pretrained=True, image_size=128, dim=256, merge_grid=4, max_tokens=128)

    @classmethod
    def full(cls) -> "EncoderConfig":
        """ImageBind-Huge branches (D = 1024, ImageBind's joint width), 224x224 input."""
        return cls(
            backbone="imagebind",
            depth_norm="omnivore_disparity",
            pretrained=True,
            weights_path="checkpoints/imagebind_huge.pth",
            image_size=224,
            dim=1024,
            merge_grid=8,
            max_tokens=256,
        )


def disparity_scale_of(video: Video4D, cfg: EncoderConfig) -> float:
    """``focal_px * baseline_m`` of ``video``'s camera: :meth:`SceneEncoder.forward`'s ``disparity_scale``.

    The focal length is ``video.intrinsics[0, 0]``, in pixels of ``video``'s frames
    (not of the encoder's resized input), the baseline ``video.depth_baseline``;
    each falls back to ``cfg.default_focal_px`` / ``cfg.default_baseline_m``.
    """
    focal = cfg.default_focal_px if video.intrinsics is None else float(video.intrinsics[0][0])
    if not (math.isfinite(focal) and focal > 0):
        raise DataError(video.video_id or "video", f"focal length fx must be positive, got {focal}", field="intrinsics")
    baseline = cfg.default_baseline_m if video.depth_baseline is None else float(video.depth_baseline)
    return focal * baseline


@dataclass
class BranchFeatures:
    """Per-frame patch features of each branch, in the shared width, before fusion."""

    rgb: torch.Tensor  # [B, T, N, D]
    depth: torch.Tensor | None  # [B, T, N, D]; None without depth input or depth branch
    hw: tuple[int, int]  # the patch grid, N = h * w


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
        fusion: GatedTokenFusion,
        merger: TokenMerger,
        image_size: int,
        rgb_mean: tuple[float, float, float] = IMAGENET_MEAN,
        rgb_std: tuple[float, float, float] = IMAGENET_STD,
        depth_norm: DepthNorm,
        default_disparity_scale: float,
    ):
        super().__init__()
        self.rgb_branch = rgb_branch
        self.depth_branch = depth_branch
        self.fusion = fusion
        self.merger = merger
        self.image_size = image_size
        self.depth_norm = depth_norm
        self.default_disparity_scale = default_disparity_scale
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

    def normalize_depth(self, depth: torch.Tensor, disparity_scale: torch.Tensor | None = None) -> torch.Tensor:
        """``[B', 1, H, W]`` metres -> resized, standardised disparity (see module docstring).

        ``disparity_scale [B']``: ``focal_px * baseline_m`` per image (None: the
        default camera); only schemes with ``camera`` use it.
        """
        norm = self.depth_norm
        depth = depth.float()
        scale: float | torch.Tensor = 1.0
        if norm.camera:
            scale = self.default_disparity_scale
            if disparity_scale is not None:
                scale = disparity_scale.to(device=depth.device, dtype=torch.float32).view(-1, 1, 1, 1)  # [B', 1, 1, 1]
        valid = torch.isfinite(depth) & (depth > 0)
        disp = torch.where(valid, scale / depth.clamp(*norm.depth_range), torch.zeros_like(depth))
        disp = disp.clamp(*norm.disparity_range) / norm.disparity_div
        return ((self._resize(disp) - norm.mean) / norm.std).to(self._dtype())

    def _dtype(self) -> torch.dtype:
        # Normalise in float32 (disparity and small stds), then feed the backbone in its own dtype.
        return self.rgb_branch.proj.weight.dtype

    def branches(
        self, rgb: torch.Tensor, depth: torch.Tensor | None = None, *, disparity_scale: torch.Tensor | None = None
    ) -> BranchFeatures:
        """Per-frame features of each branch: ``rgb [B, T, 3, H, W]`` (and ``depth [B, T, 1, H, W]``
        when given and the encoder has a depth branch) -> :class:`BranchFeatures`. ``disparity_scale
        [B]``: each clip's ``focal_px * baseline_m`` (:func:`disparity_scale_of`; None: the config's
        default camera), used by camera-based depth schemes."""
        if rgb.dim() != 5 or rgb.shape[2] != 3:
            raise ValueError(f"rgb must be [B, T, 3, H, W], got {tuple(rgb.shape)}")
        b, t = rgb.shape[:2]
        if disparity_scale is not None and disparity_scale.shape != (b,):
            raise ValueError(f"disparity_scale must be [B] = {(b,)}, got {tuple(disparity_scale.shape)}")
        rgb_tok, (h, w) = self.rgb_branch(self.normalize_rgb(rgb.flatten(0, 1)))  # [B*T, N, D]
        n, d = rgb_tok.shape[1:]
        depth_tok: torch.Tensor | None = None
        if depth is not None and self.depth_branch is not None:
            if depth.dim() != 5 or depth.shape[:3] != (b, t, 1):
                raise ValueError(f"depth must be [B, T, 1, H, W] matching rgb, got {tuple(depth.shape)}")
            scale = None if disparity_scale is None else disparity_scale.repeat_interleave(t)  # [B*T]
            depth_tok, (dh, dw) = self.depth_branch(self.normalize_depth(depth.flatten(0, 1), scale))
            if (dh, dw) != (h, w):
                # Branches with different patch sizes (ImageBind: 14 vs 16) meet on the RGB grid.
                grid = depth_tok.transpose(1, 2).reshape(-1, d, dh, dw)
                grid = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)
                depth_tok = grid.flatten(2).transpose(1, 2)
        return BranchFeatures(
            rgb=rgb_tok.reshape(b, t, n, d),
            depth=None if depth_tok is None else depth_tok.reshape(b, t, n, d),
            hw=(h, w),
        )

    def aggregate(self, rgb_feats: torch.Tensor, depth_feats: torch.Tensor | None, hw: tuple[int, int]) -> EncoderOutput:
        """Branch features ``[B, T, N, D]`` (real, estimated or a mix) -> fused maps and LLM tokens."""
        b, t, n, d = rgb_feats.shape
        h, w = hw
        if depth_feats is not None and depth_feats.shape != rgb_feats.shape:
            raise ValueError(f"depth_feats must be {tuple(rgb_feats.shape)}, got {tuple(depth_feats.shape)}")
        depth_tok = None if depth_feats is None else depth_feats.flatten(0, 1).to(rgb_feats.dtype)
        fused = self.fusion(rgb_feats.flatten(0, 1), depth_tok)  # [B*T, N, D]
        fused_btnd = fused.reshape(b, t, n, d)
        tokens, frames = self.merger(fused_btnd, (h, w))
        dense = fused_btnd.reshape(b, t, h, w, d).permute(0, 1, 4, 2, 3)  # [B, T, D, h, w]
        return EncoderOutput(
            tokens=tokens, dense=dense, rgb_feats=rgb_feats, depth_feats=depth_feats, fused=fused_btnd,
            token_frames=frames,
        )

    def forward(
        self,
        rgb: torch.Tensor,
        depth: torch.Tensor | None = None,
        *,
        depth_feats: torch.Tensor | None = None,
        disparity_scale: torch.Tensor | None = None,
    ) -> EncoderOutput:
        """:meth:`branches` then :meth:`aggregate`; ``depth_feats [B, T, N, D]`` (e.g. estimated from
        RGB) take the depth branch's place."""
        feats = self.branches(rgb, None if depth_feats is not None else depth, disparity_scale=disparity_scale)
        return self.aggregate(feats.rgb, depth_feats if depth_feats is not None else feats.depth, feats.hw)


def build_encoder(cfg: EncoderConfig) -> SceneEncoder:
    """Build the encoder (and load pretrained weights where configured)."""
    for name in (cfg.backbone, cfg.depth_backbone):
        if name is not None and name not in BACKBONES:
            raise ConfigError(f"encoder.backbone: unknown backbone {name!r}; options: {sorted(BACKBONES)}")
    depth_name = cfg.depth_backbone or cfg.backbone
    wanted = BACKBONES[depth_name].pretrained_depth_norm
    if cfg.use_depth and cfg.pretrained and wanted is not None and cfg.depth_norm != wanted:
        # a frozen pretrained depth trunk fed another input scale gives meaningless features
        raise ConfigError(
            f"encoder.depth_norm: pretrained {depth_name!r} depth weights expect {wanted!r}, got {cfg.depth_norm!r}"
        )
    rgb = Branch(backbone=build_backbone(cfg.backbone, in_chans=3, cfg=cfg), dim=cfg.dim)
    depth = None
    if cfg.use_depth:
        depth = Branch(backbone=build_backbone(depth_name, in_chans=1, cfg=cfg), dim=cfg.dim)
    encoder = SceneEncoder(
        rgb_branch=rgb,
        depth_branch=depth,
        fusion=GatedTokenFusion(dim=cfg.dim, reduction=cfg.fusion_reduction),
        merger=TokenMerger(dim=cfg.dim, grid=cfg.merge_grid, max_tokens=cfg.max_tokens, frame_grid=cfg.frame_grid),
        image_size=cfg.image_size,
        rgb_mean=BACKBONES[cfg.backbone].rgb_mean,
        rgb_std=BACKBONES[cfg.backbone].rgb_std,
        depth_norm=DEPTH_NORMS[cfg.depth_norm],
        default_disparity_scale=cfg.default_disparity_scale,
    )
    if cfg.backbone == "imagebind" and cfg.pretrained:
        from psg4d.model.imagebind import load_imagebind_checkpoint

        if not cfg.weights_path:
            raise ConfigError("encoder.weights_path: backbone 'imagebind' with pretrained=true needs imagebind_huge.pth")
        load_imagebind_checkpoint(encoder, cfg.weights_path)
    log.info(
        "scene encoder: %s RGB / %s depth backbone (%s), D=%d, %dx%d input, %d parameters",
        cfg.backbone,
        (cfg.depth_backbone or cfg.backbone) if cfg.use_depth else "no",
        cfg.depth_norm,
        cfg.dim,
        cfg.image_size,
        cfg.image_size,
        sum(p.numel() for p in encoder.parameters()),
    )
    return encoder

