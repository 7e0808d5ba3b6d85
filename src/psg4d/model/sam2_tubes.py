"""Mask tubes the way SAM2 makes them: SAM2's own model, prompted by ``[Obj]``, tracked by its memory.

The model is a :class:`sam2.modeling.sam2_base.SAM2Base` built by :mod:`psg4d.model.sam2_build`
from one of the ``sam2`` package's own configs and a size of its table.
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
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from psg4d.errors import ConfigError
from psg4d.model.merging import sinusoid
from psg4d.model.sam2_prompts import SpatialPrompts

log = logging.getLogger(__name__)

# SAM2's mask logit for "no object" (``sam2.modeling.sam2_base.NO_OBJ_SCORE``): far below any threshold.
# Both decoders give it to a frame their presence head calls absent; it lives here, not imported from
# the sam2 package, which is an optional extra.
NO_OBJECT_LOGIT = -1024.0

# SAM2's input normalisation (``sam2.utils.transforms.SAM2Transforms``: ImageNet statistics).
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


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

    def __init__(self, *, sam: nn.Module, num_prompt_tokens: int = 2, num_classes: int = 0):
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
        # num_classes > 0: a per-cell category head on SAM2's own features (stride 16, the map the
        # prompt tokens attend to, plus stride 8), trained by a dense segmentation loss. Without it
        # a SAM2 trained from scratch learns which region a category is only through the [Obj]
        # loss (BENCHMARKS.md: 0 % teacher-forced hits on several categories).
        self.semantic_head: nn.ModuleDict | None = None
        if num_classes > 0:
            fine = int(sam.sam_mask_decoder.conv_s1.out_channels)
            self.semantic_head = nn.ModuleDict({"s16": nn.Conv2d(self.dim, num_classes, 1),
                                                "s8": nn.Conv2d(fine, num_classes, 1)})
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
        """SAM2's parameters no forward of this model reaches (kept for strict loading): with
        ``directly_add_no_mem_embed`` (every SAM2.1 config) a frame without memory adds
        ``no_mem_embed`` and never reads ``no_mem_pos_enc``."""
        return {"sam.no_mem_pos_enc"} if self.sam.directly_add_no_mem_embed else set()

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

    def semantic_logits(self, feats: FrameFeatures) -> torch.Tensor:
        """Per-cell category logits ``[V*T, C, h8, w8]`` from SAM2's stride-16 map (upsampled) plus
        its stride-8 features, clip-major columns as in ``feats``."""
        if self.semantic_head is None:
            raise ConfigError("model.mask_decoder.semantic_loss_weight is 0: SAM2 has no semantic head")
        (h8, w8), (h16, w16) = feats.feat_sizes[-2], feats.feat_sizes[-1]
        n = int(feats.vision_feats[-1].shape[1])
        s8 = feats.vision_feats[-2].permute(1, 2, 0).reshape(n, -1, h8, w8)  # [V*T, C8, h8, w8]
        s16 = feats.vision_feats[-1].permute(1, 2, 0).reshape(n, -1, h16, w16)  # [V*T, D, h16, w16]
        coarse = F.interpolate(self.semantic_head["s16"](s16), size=(h8, w8), mode="bilinear", align_corners=False)
        return coarse + self.semantic_head["s8"](s8)

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

    def region_masks(self, feats: FrameFeatures, categories: torch.Tensor, videos: torch.Tensor, *,
                     logits: torch.Tensor | None = None) -> torch.Tensor:
        """Where the semantic head sees each object's category: ``categories [N, C']`` (a
        distribution over the head's first C' classes, C' = categories without "unlabelled") of
        objects in clips ``videos [N]`` -> mask-prompt logits ``[N, T, h8, w8]``, SAM2's mask-prompt
        scale (1 -> +10, 0 -> -10, as gt masks are fed to it). Detached: a prompt, as SAM2 feeds
        its own earlier masks back. ``logits``: :meth:`semantic_logits` of ``feats`` where the caller
        has them already (training computes them for the semantic loss)."""
        t_all = feats.num_frames
        with torch.no_grad():
            logits = self.semantic_logits(feats) if logits is None else logits.detach()
            probs = logits.float().softmax(1)  # [V*T, C, h, w]
            probs = probs.view(-1, t_all, *probs.shape[1:])[videos.long()]  # [N, T, C, h, w]
            region = torch.einsum("nc,ntchw->nthw", categories.detach().float(), probs[:, :, : categories.shape[1]])
        return region * 20.0 - 10.0

    def decode(self, feats: FrameFeatures, prompts: torch.Tensor, *, videos: torch.Tensor | None = None,
               time_offset: int = 0, regions: torch.Tensor | None = None) -> TubeOutput:
        """``prompts [N, D]`` (projected ``[Obj]`` states) of objects in clips ``videos [N]`` (None:
        all in clip 0) -> one tube per prompt over every frame of ``feats``, ``[N, T, H, W]``.
        ``time_offset``: the clip's first frame on the model's timeline (a training window), for
        the prompts' time embedding. ``regions [N, T, h, w]`` (:meth:`region_masks`): a mask
        prompt per frame beside the ``[Obj]`` tokens (SAM2's dense prompt), else none."""
        if prompts.dim() != 2 or prompts.shape[1] != self.dim:
            raise ValueError(f"prompts must be [N, {self.dim}], got {tuple(prompts.shape)}")
        n, t_all = prompts.shape[0], feats.num_frames
        if n == 0:
            empty = prompts.new_zeros(0, t_all)
            return TubeOutput(prompts.new_zeros(0, t_all, *feats.out_size), empty, empty)
        sparse = self.prompt_tokens(prompts, time_offset + t_all)[:, time_offset:]  # [N, T, K, D]
        if regions is None:
            dense = self._no_mask(n, sparse.dtype)

            def prompt_at(t: int):
                return sparse[:, t], dense
        else:
            enc = self.sam.sam_prompt_encoder

            def prompt_at(t: int):
                masks = F.interpolate(regions[:, t, None], size=enc.mask_input_size, mode="bilinear",
                                      align_corners=False)  # [N, 1, 4h, 4w]
                _, dense_t = enc(points=None, boxes=None, masks=masks.to(sparse.dtype))
                return sparse[:, t], dense_t
        return self._run(feats, self._videos(videos, n, prompts.device), [(t, False) for t in range(t_all)],
                         prompt_at)

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
