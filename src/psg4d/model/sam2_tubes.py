"""Mask tubes the way SAM2 makes them: SAM2's own model, prompted by ``[Obj]``, tracked by its memory.

The model is a :class:`sam2.modeling.sam2_base.SAM2Base` composed from one of the ``sam2``
package's own configs (``configs/sam2.1/sam2.1_hiera_*.yaml``) through hydra, as
``sam2.build_sam.build_sam2`` does, plus the overrides of a size from :data:`SAM2_SIZES`
(``tiny``: the Hiera trunk, FPN neck, memory attention and memory encoder shrunk for a CPU).
Nothing of SAM2 is re-implemented here: its image encoder (trunk + neck, with the stride-4/8
high-resolution features the decoder reads through ``use_high_res_features_in_sam``), prompt
encoder, mask decoder with the object-presence head, memory encoder, memory attention and
object pointers all run as they do in SAM2's video predictor; this module only orders the
frames and supplies the prompts.

A tube (:meth:`Sam2Tubes.decode`) is decoded frame by frame in time order, N objects at once
(SAM2's batch dimension): every frame is prompted by the object's ``[Obj]`` hidden state,
projected into ``num_prompt_tokens`` sparse prompt tokens (token 0: identity; token 1: identity
plus a zero-initialised time embedding of the frame), and conditioned on SAM2's memory bank —
the first frame is SAM2's initial conditioning frame, every later frame attends to it, to the
``num_maskmem - 1`` frames before it and to their object pointers, and each predicted mask is
encoded back into memory. Prompting every frame (rather than only the frame where the object is
most present) is the choice made here: an ``[Obj]`` prompt carries no location, so a frame
without it would have nothing but memory to go on, and an object that enters the clip late
would have no memory to follow; it also needs no second pass to find the most-present frame.
(The alternative is not measured yet.)

:meth:`Sam2Tubes.propagate_prompted` is SAM2's own promptable video segmentation: points, a box
or a mask on one frame, memory to every other frame forwards then backwards. The
``sam2_pretrain`` stage trains it on the world's dense masks of every object
(:func:`psg4d.model.sam2_prompts.sample_spatial_prompts` draws the prompts as SAM2's training does).

Masks come out at the input frames' resolution; a frame the presence head scores absent gives
SAM2's "no object" logit (:data:`NO_OBJECT_LOGIT`) in the gated masks, the raw logits are kept
for the losses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from psg4d.errors import CheckpointError, ConfigError
from psg4d.model.merging import sinusoid
from psg4d.model.sam2_prompts import SpatialPrompts
from psg4d.model.weights import mark_pretrained

log = logging.getLogger(__name__)

# SAM2's mask logit for "no object" (``sam2.modeling.sam2_base.NO_OBJ_SCORE``).
NO_OBJECT_LOGIT = -1024.0
# SAM2's input normalisation (``sam2.utils.transforms.SAM2Transforms``: ImageNet statistics).
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


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


@dataclass
class FrameFeatures:
    """SAM2's backbone output (``SAM2Base._prepare_backbone_features``) for the T frames of each
    of V clips, clip-major: column ``v * T + t`` is frame t of clip v."""

    vision_feats: list[torch.Tensor]  # per level [h_l*w_l, V*T, C_l], highest resolution first
    vision_pos: list[torch.Tensor]  # per level [h_l*w_l, V*T, C]
    feat_sizes: list[tuple[int, int]]
    out_size: tuple[int, int]  # (H, W) of the input frames: masks come out at this size
    num_frames: int  # T

    @property
    def num_videos(self) -> int:
        return int(self.vision_feats[-1].shape[1]) // self.num_frames


@dataclass
class TubeOutput:
    mask_logits: torch.Tensor  # [N, T, H, W] raw logits (for losses)
    iou_pred: torch.Tensor  # [N, T]
    object_logits: torch.Tensor  # [N, T] presence logit


class Sam2Tubes(nn.Module):
    """``[Obj]``-prompted SAM2 video segmentation (see the module docstring)."""

    def __init__(self, *, sam: nn.Module, num_prompt_tokens: int = 2):
        super().__init__()
        if num_prompt_tokens not in (1, 2):
            raise ConfigError(f"mask_decoder.num_prompt_tokens must be 1 or 2, got {num_prompt_tokens}")
        if not sam.use_high_res_features_in_sam:
            raise ConfigError("the SAM2 config must set use_high_res_features_in_sam")
        self.sam = sam
        self.dim = int(sam.hidden_dim)
        self.num_prompt_tokens = num_prompt_tokens
        self.slot_embed = nn.Parameter(torch.randn(num_prompt_tokens, self.dim) * 0.02)
        self.time_proj = nn.Linear(self.dim, self.dim)
        nn.init.zeros_(self.time_proj.weight)
        nn.init.zeros_(self.time_proj.bias)
        self.register_buffer("_mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def has_presence_head(self) -> bool:
        return bool(self.sam.pred_obj_scores)

    @property
    def image_size(self) -> int:
        return int(self.sam.image_size)

    def spatial_prompt_parameters(self) -> set[str]:
        """Parameters only spatial prompts use (points, boxes, masks): idle when ``[Obj]`` prompts."""
        enc = {f"sam.sam_prompt_encoder.{n}" for n, _ in self.sam.sam_prompt_encoder.named_parameters()
               if not n.startswith("no_mask_embed")}
        extra = {f"sam.{n}" for n, _ in self.sam.named_parameters() if n.startswith("mask_downsample.")}
        return enc | extra

    def unused_parameters(self) -> set[str]:
        return set()

    def gate_absent(self, out: TubeOutput) -> torch.Tensor:
        """``out.mask_logits`` with frames the presence head scores absent set to "no object"."""
        if not self.has_presence_head:
            return out.mask_logits
        absent = (out.object_logits < 0)[..., None, None]  # [N, T, 1, 1]
        return out.mask_logits.masked_fill(absent, NO_OBJECT_LOGIT)

    # ---------------------------------------------------------------- frames
    def frame_features(self, rgb: torch.Tensor) -> FrameFeatures:
        """``rgb [T, 3, H, W]`` or ``[V, T, 3, H, W]`` in [0, 1] -> SAM2's multi-level features at
        its own input size."""
        if rgb.dim() == 4:
            rgb = rgb[None]
        v, t = rgb.shape[:2]
        size = self.image_size
        x = rgb.reshape(v * t, *rgb.shape[2:]).float()
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        x = ((x - self._mean) / self._std).to(next(self.sam.parameters()).dtype)
        backbone_out = self.sam.forward_image(x)
        _, feats, pos, sizes = self.sam._prepare_backbone_features(backbone_out)
        return FrameFeatures(vision_feats=feats, vision_pos=pos, feat_sizes=sizes,
                             out_size=(int(rgb.shape[-2]), int(rgb.shape[-1])), num_frames=int(t))

    # -------------------------------------------------------------- prompts
    def prompt_tokens(self, prompts: torch.Tensor, t: int) -> torch.Tensor:
        """``[N, D] -> [N, T, K, D]`` sparse prompt embeddings: identity (+ time on token 1)."""
        n, d = prompts.shape
        frames = torch.arange(t, device=prompts.device)
        time = self.time_proj(sinusoid(frames, d).to(prompts.dtype))  # [T, D]
        base = (prompts[:, None, None, :] + self.slot_embed[None, None]).expand(n, t, self.num_prompt_tokens, d)
        if self.num_prompt_tokens == 1:
            return base + time[None, :, None, :]
        return torch.cat([base[:, :, :1], base[:, :, 1:] + time[None, :, None, :]], dim=2)

    def _no_mask(self, n: int, dtype: torch.dtype) -> torch.Tensor:
        enc = self.sam.sam_prompt_encoder
        h, w = enc.image_embedding_size
        return enc.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(n, -1, h, w).to(dtype)

    def _spatial(self, p: SpatialPrompts, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.sam.sam_prompt_encoder
        masks = None
        if p.masks is not None:
            masks = F.interpolate(p.masks.float(), size=enc.mask_input_size, mode="bilinear",
                                  align_corners=False, antialias=True)
            # a gt mask in [0, 1] on SAM's logit scale, as SAM2's training feeds mask prompts
            masks = masks * 20.0 - 10.0
        points = None
        if p.points is not None:
            points = (p.points.float(), p.labels.to(torch.int32))
        elif p.boxes is None:
            # SAM2's "no prompt": one padding point
            points = (torch.zeros(n, 1, 2, device=device), -torch.ones(n, 1, dtype=torch.int32, device=device))
        return enc(points=points, boxes=p.boxes, masks=masks)

    # ---------------------------------------------------------------- decode
    def _heads(self, pix: torch.Tensor, high_res: list[torch.Tensor], sparse: torch.Tensor,
               dense: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """SAM2's mask decoder on memory-conditioned features ``pix [N, C, h, w]``; returns
        ``(low-res logits [N, 1, 4h, 4w], iou [N], object logit [N], object pointer [N, C])``."""
        sam = self.sam
        low, iou, tokens, obj = sam.sam_mask_decoder(
            image_embeddings=pix,
            image_pe=sam.sam_prompt_encoder.get_dense_pe().to(pix.dtype),
            sparse_prompt_embeddings=sparse.to(pix.dtype),
            dense_prompt_embeddings=dense.to(pix.dtype),
            multimask_output=False,
            repeat_image=False,
            high_res_features=high_res,
        )
        ptr = sam.obj_ptr_proj(tokens[:, 0])
        if sam.pred_obj_scores:
            appearing = (obj > 0).to(ptr.dtype)  # [N, 1]
            if sam.fixed_no_obj_ptr:
                ptr = appearing * ptr
            ptr = ptr + (1 - appearing) * sam.no_obj_ptr
        return low.float(), iou[:, 0].float(), obj[:, 0].float(), ptr

    def _run(self, feats: FrameFeatures, videos: torch.Tensor, order: list[tuple[int, bool]],
             prompt_at: Any) -> TubeOutput:
        """Decode the frames in ``order`` ((frame, reverse) pairs; the first is the conditioning
        frame) for objects of clips ``videos [N]``; ``prompt_at(t) -> (sparse [N, K, C], dense
        [N, C, h, w])``. Returns the decoded frames only, in time order."""
        sam = self.sam
        n = int(videos.shape[0])
        t_all = feats.num_frames
        out_size = feats.out_size
        od: dict[str, dict[int, dict[str, Any]]] = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        masks: dict[int, torch.Tensor] = {}
        ious: dict[int, torch.Tensor] = {}
        objs: dict[int, torch.Tensor] = {}
        for i, (t, reverse) in enumerate(order):
            cols = videos * t_all + t  # [N] each object's clip at frame t
            vis = [f[:, cols] for f in feats.vision_feats]  # [hw, N, C_l]
            pos = [p[:, cols] for p in feats.vision_pos]
            pix = sam._prepare_memory_conditioned_features(
                frame_idx=t, is_init_cond_frame=i == 0, current_vision_feats=vis[-1:],
                current_vision_pos_embeds=pos[-1:], feat_sizes=feats.feat_sizes[-1:], output_dict=od,
                num_frames=t_all, track_in_reverse=reverse,
            )  # [N, C, h, w]
            high_res = [x.permute(1, 2, 0).reshape(n, x.shape[2], *s) for x, s in zip(vis[:-1], feats.feat_sizes[:-1])]
            sparse, dense = prompt_at(t)
            low, iou, obj, ptr = self._heads(pix, high_res, sparse, dense)
            gated = torch.where((obj > 0)[:, None, None, None], low, NO_OBJECT_LOGIT) if sam.pred_obj_scores else low
            high = F.interpolate(gated, size=(sam.image_size, sam.image_size), mode="bilinear", align_corners=False)
            mem, mem_pos = sam._encode_new_memory(
                current_vision_feats=vis, feat_sizes=feats.feat_sizes, pred_masks_high_res=high,
                object_score_logits=obj[:, None], is_mask_from_pts=False,
            )
            key = "cond_frame_outputs" if i == 0 else "non_cond_frame_outputs"
            od[key][t] = {"maskmem_features": mem, "maskmem_pos_enc": mem_pos, "obj_ptr": ptr}
            masks[t] = F.interpolate(low, size=out_size, mode="bilinear", align_corners=False)[:, 0]  # [N, H, W]
            ious[t], objs[t] = iou, obj
        done = sorted(masks)
        return TubeOutput(
            mask_logits=torch.stack([masks[t] for t in done], dim=1),  # [N, T', H, W]
            iou_pred=torch.stack([ious[t] for t in done], dim=1),
            object_logits=torch.stack([objs[t] for t in done], dim=1),
        )

    @staticmethod
    def _videos(videos: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
        return torch.zeros(n, dtype=torch.long, device=device) if videos is None else videos.to(device).long()

    def decode(self, feats: FrameFeatures, prompts: torch.Tensor, *, videos: torch.Tensor | None = None,
               time_offset: int = 0) -> TubeOutput:
        """``prompts [N, D]`` (projected ``[Obj]`` states) of objects in clips ``videos [N]`` (None:
        all in clip 0) -> one tube per prompt over every frame of ``feats``, ``[N, T, H, W]``.
        ``time_offset``: the clip's first frame on the model's timeline (a training window), for
        the prompts' time embedding."""
        if prompts.dim() != 2 or prompts.shape[1] != self.dim:
            raise ValueError(f"prompts must be [N, {self.dim}], got {tuple(prompts.shape)}")
        n, t_all = prompts.shape[0], feats.num_frames
        if n == 0:
            empty = prompts.new_zeros(0, t_all)
            return TubeOutput(prompts.new_zeros(0, t_all, *feats.out_size), empty, empty)
        sparse = self.prompt_tokens(prompts, time_offset + t_all)[:, time_offset:]  # [N, T, K, D]
        dense = self._no_mask(n, sparse.dtype)
        return self._run(feats, self._videos(videos, n, prompts.device), [(t, False) for t in range(t_all)],
                         lambda t: (sparse[:, t], dense))

    def propagate_prompted(self, feats: FrameFeatures, prompts: SpatialPrompts, frame: int, *,
                           videos: torch.Tensor) -> TubeOutput:
        """SAM2's promptable video segmentation: ``prompts`` on ``frame`` for objects of clips
        ``videos [N]``, memory to the later frames, then (in reverse) to the earlier ones."""
        t_all = feats.num_frames
        device = feats.vision_feats[-1].device
        n = int(videos.shape[0])
        order = [(t, False) for t in range(frame, t_all)] + [(t, True) for t in range(frame - 1, -1, -1)]
        blank = SpatialPrompts()

        def prompt_at(t: int):
            return self._spatial(prompts if t == frame else blank, n, device)

        return self._run(feats, self._videos(videos, n, device), order, prompt_at)

    def forward(self, feats: FrameFeatures, prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.decode(feats, prompts)
        return out.mask_logits, out.iou_pred


# ------------------------------------------------------------------- build / load


def build_sam2_tubes(settings: Sam2Settings, *, num_prompt_tokens: int = 2, weights_path: str | None = None,
                     pretrained: bool = False) -> Sam2Tubes:
    """Build SAM2 from its package config; with ``pretrained``, load a whole SAM2 checkpoint
    strictly and freeze ``settings.frozen``."""
    tubes = Sam2Tubes(sam=build_sam2_model(settings), num_prompt_tokens=num_prompt_tokens)
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
