"""Which SAM2, and building it: the ``sam2`` package's own configs composed through hydra, an
explicit size table, and whole official checkpoints loaded strictly.

:func:`build_sam2_model` composes a :class:`sam2.modeling.sam2_base.SAM2Base` from one of the package's
configs (``configs/sam2.1/sam2.1_hiera_*.yaml``), as ``sam2.build_sam.build_sam2`` does, plus the
overrides of a size from :data:`SAM2_SIZES` (``tiny``: the Hiera trunk, FPN neck, memory attention and
memory encoder shrunk for a CPU; ``official``: the config as released). :func:`build_sam2_tubes` wraps
it in :class:`~psg4d.model.sam2_tubes.Sam2Tubes`; :func:`load_sam2_model_checkpoint` loads a whole
checkpoint in the official ``{"model": state_dict}`` layout, naming any key that does not fit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from psg4d.errors import CheckpointError, ConfigError
from psg4d.model.sam2_tubes import Sam2Tubes
from psg4d.model.provenance import mark_pretrained

log = logging.getLogger(__name__)


def _tiny_overrides(embed: int = 24, dim: int = 64, mem: int = 32) -> list[str]:
    """Hydra overrides that shrink ``sam2.1_hiera_t.yaml`` to a CPU model of ~1.6 M parameters
    (trunk widths 24-192 in 1/1/2/1 blocks, neck and decoder width 64, memory width 32, one
    memory-attention layer); strides 4/8/16 as in SAM2, so at 128 px the decoder reads an 8x8
    map plus 32x32 and 16x16 high-resolution features."""
    return [
        f"++model.image_encoder.trunk.embed_dim={embed}",
        "++model.image_encoder.trunk.num_heads=1",
        "++model.image_encoder.trunk.stages=[1,1,2,1]",
        "++model.image_encoder.trunk.global_att_blocks=[3]",
        "++model.image_encoder.trunk.window_spec=[8,4,8,4]",
        "++model.image_encoder.trunk.window_pos_embed_bkg_spatial_size=[4,4]",
        f"++model.image_encoder.neck.d_model={dim}",
        f"++model.image_encoder.neck.backbone_channel_list=[{8 * embed},{4 * embed},{2 * embed},{embed}]",
        f"++model.image_encoder.neck.position_encoding.num_pos_feats={dim}",
        f"++model.memory_attention.d_model={dim}",
        f"++model.memory_attention.layer.d_model={dim}",
        "++model.memory_attention.layer.dim_feedforward=256",
        f"++model.memory_attention.layer.self_attention.embedding_dim={dim}",
        f"++model.memory_attention.layer.cross_attention.embedding_dim={dim}",
        f"++model.memory_attention.layer.cross_attention.kv_in_dim={mem}",
        # one memory-attention layer and one fuser block (SAM2-T: 4 and 2): each costs ~15 % of a
        # training step's decoding on a CPU
        "++model.memory_attention.num_layers=1",
        "++model.memory_encoder.fuser.num_layers=1",
        # no dropout: on a CPU it costs a fifth of the decoding time (bernoulli draws, and the
        # attention falls back from the fused kernel), and a 1.8 M-parameter model needs no more
        "++model.memory_attention.layer.dropout=0.0",
        "++model.memory_attention.layer.self_attention.dropout=0.0",
        "++model.memory_attention.layer.cross_attention.dropout=0.0",
        f"++model.memory_encoder.out_dim={mem}",
        f"++model.memory_encoder.in_dim={dim}",
        f"++model.memory_encoder.position_encoding.num_pos_feats={mem}",
        f"++model.memory_encoder.mask_downsampler.embed_dim={dim}",
        # two 4x4/4 convolutions instead of four 3x3/2 (total stride 16 either way): the third
        # of those four, 64 -> 256 channels at 16x16, was the largest single cost per frame
        "++model.memory_encoder.mask_downsampler.kernel_size=4",
        "++model.memory_encoder.mask_downsampler.stride=4",
        "++model.memory_encoder.mask_downsampler.padding=0",
        f"++model.memory_encoder.fuser.layer.dim={dim}",
    ]


# size -> hydra overrides of the package config (the explicit table; "official": the config as released)
SAM2_SIZES: dict[str, list[str]] = {
    "official": [],
    "tiny": _tiny_overrides(),
}


@dataclass
class Sam2Settings:
    """Which SAM2: a config of the ``sam2`` package, a size from :data:`SAM2_SIZES`, extra hydra
    overrides, SAM2's input size, and the submodules of the SAM2 model that stay frozen."""

    config: str = "configs/sam2.1/sam2.1_hiera_t.yaml"
    size: str = "tiny"
    overrides: list[str] = field(default_factory=list)
    image_size: int = 128
    # SAM2 submodule prefixes (e.g. "image_encoder.trunk") that never train; they must come from
    # the checkpoint (mask_decoder.weights_path)
    frozen: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.size not in SAM2_SIZES:
            raise ConfigError(f"model.mask_decoder.sam2.size must be one of {sorted(SAM2_SIZES)}, got {self.size!r}")
        if self.image_size < 32 or self.image_size % 16:
            raise ConfigError(f"model.mask_decoder.sam2.image_size must be a multiple of 16 >= 32, got {self.image_size}")


def _sam2_modules():
    try:
        import sam2  # noqa: F401  (initialises hydra's config search path to the package)
        from hydra import compose
        from hydra.utils import instantiate
        from omegaconf import OmegaConf
    except ImportError as e:
        raise ConfigError("the SAM2 mask path needs the sam2 package (pip install 'psg4d[sam2]')") from e
    return compose, instantiate, OmegaConf


def build_sam2_model(settings: Sam2Settings) -> nn.Module:
    """A ``SAM2Base`` from the package config ``settings.config`` with the size's and the extra overrides."""
    compose, instantiate, OmegaConf = _sam2_modules()
    grid = settings.image_size // 16
    # RoPE's feature size follows from the input size (stride 16), for every size of the table
    overrides = [
        *SAM2_SIZES[settings.size],
        f"++model.image_size={settings.image_size}",
        f"++model.memory_attention.layer.self_attention.feat_sizes=[{grid},{grid}]",
        f"++model.memory_attention.layer.cross_attention.feat_sizes=[{grid},{grid}]",
        *settings.overrides,
    ]
    try:
        cfg = compose(config_name=settings.config, overrides=overrides)
    except Exception as e:  # hydra's MissingConfigException / override errors carry the reason
        raise ConfigError(f"model.mask_decoder.sam2: cannot compose {settings.config!r}: {e}") from e
    OmegaConf.resolve(cfg)
    return instantiate(cfg.model, _recursive_=True)


def build_sam2_tubes(settings: Sam2Settings, *, num_prompt_tokens: int = 2, weights_path: str | None = None,
                     pretrained: bool = False, num_classes: int = 0) -> Sam2Tubes:
    """Build SAM2 from its package config; with ``pretrained``, load a whole SAM2 checkpoint
    strictly and freeze ``settings.frozen``. ``num_classes > 0`` adds the semantic head (not
    part of SAM2: never in its checkpoint)."""
    tubes = Sam2Tubes(sam=build_sam2_model(settings), num_prompt_tokens=num_prompt_tokens, num_classes=num_classes)
    if pretrained:
        if not weights_path:
            raise ConfigError("mask_decoder.weights_path: pretrained=true needs a SAM2 checkpoint (sam2*_hiera_*.pt)")
        load_sam2_model_checkpoint(tubes.sam, weights_path)
    if settings.frozen:
        names = [n for n, _ in tubes.sam.named_parameters()]
        for prefix in settings.frozen:
            if not any(n == prefix or n.startswith(prefix + ".") for n in names):
                raise ConfigError(f"model.mask_decoder.sam2.frozen: {prefix!r} names no SAM2 parameter")
        for n, p in tubes.sam.named_parameters():
            if any(n == pre or n.startswith(pre + ".") for pre in settings.frozen):
                if not pretrained:
                    raise ConfigError(f"model.mask_decoder.sam2.frozen needs pretrained SAM2 weights ({n} would stay random)")
                p.requires_grad_(False)
    return tubes


def load_sam2_model_checkpoint(sam: nn.Module, path: str | Path) -> list[str]:
    """Load a SAM2 checkpoint (``{"model": state_dict}``, the official key layout) into ``sam``:
    every tensor must be there with the right shape and none may be left over (named in the
    error). Returns the loaded key names."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: SAM2 checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise CheckpointError(f"{path}: cannot read a SAM2 checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{path}: not a SAM2 checkpoint (expected a dict with 'model')")
    sd = ckpt["model"]
    own = sam.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    bad = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or bad:
        parts = []
        if missing:
            parts.append(f"missing {missing[:6]}" + (f" (+{len(missing) - 6} more)" if len(missing) > 6 else ""))
        if unexpected:
            parts.append(f"unexpected {unexpected[:6]}" + (f" (+{len(unexpected) - 6} more)" if len(unexpected) > 6 else ""))
        if bad:
            parts.append("shape mismatch " + ", ".join(f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in bad[:4]))
        raise CheckpointError(f"{path}: does not fit the configured SAM2: {'; '.join(parts)}")
    sam.load_state_dict(sd, strict=True)
    mark_pretrained(sam, sd, source=path)
    log.info("loaded %d SAM2 tensors from %s", len(sd), path)
    return sorted(sd)
