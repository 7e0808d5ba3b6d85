"""The 4D-LLM's mask-tube objectives (:class:`TubeObjectives`, a mixin of ``PSG4DModel``; called by
its ``forward``).

* :meth:`TubeObjectives.tube_loss` — the tubes the ``[Obj]`` hidden states prompt, against the gold tube of the
  object each occurrence refers to. With SAM2 (``mask_decoder.kind: sam2``) every chosen ``[Obj]``
  of the batch is decoded in one frame-by-frame pass over a random training window; the fused
  decoder decodes each sample's prompts against its dense maps.
* :meth:`TubeObjectives.promptable_loss` — the ``sam2_pretrain`` stage's objective (``transfer.objective: masks``):
  SAM2's promptable video segmentation on every object's dense masks, no LLM pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from psg4d.errors import ConfigError, DataError
from psg4d.model.batching import per_object_prompts, sample_prompts
from psg4d.model.losses import mask_losses, segmentation_loss
from psg4d.model.sam2_prompts import PROMPT_KINDS, sample_spatial_prompts
from psg4d.model.tokens import OBJ_TOKEN

if TYPE_CHECKING:  # annotations only
    from psg4d.model.contexts import TeacherForcing


def _semantic_loss(logits: torch.Tensor, semantic: torch.Tensor | None, window: slice) -> torch.Tensor:
    """SAM2's semantic-head ``logits [B*t, C, h, w]`` of the window's frames against ``semantic [B, T, S, S]``."""
    if semantic is None:
        raise DataError(None, "model.mask_decoder.semantic_loss_weight > 0 needs the batch's per-pixel categories")
    target = semantic[:, window]  # [B, t, S, S]
    return segmentation_loss(logits.float(), target.reshape(-1, *target.shape[-2:]))


class TubeObjectives:
    """The mask-tube objectives of :class:`~psg4d.model.psg4d_llm.PSG4DModel` (a mixin: the model's
    ``config``, ``ids``, ``mask_decoder``, ``obj_proj``, ``region_prompts`` and ``sam2`` are its own)."""

    def _mask_prompts(self, tf: "TeacherForcing", mask_targets, mask_valid,
                      obj_ids) -> list[tuple[int, torch.Tensor]]:
        """Per sample with masks to learn: (sample, positions of the ``[Obj]`` occurrences decoded)."""
        cfg = self.config
        out = []
        for b in range(tf.ids.shape[0]):
            pos = torch.nonzero(tf.ids[b] == self.ids.obj).flatten()  # [N_b]
            if mask_targets is None or pos.numel() == 0:
                continue
            if mask_targets[b].shape[0] != pos.numel():
                raise ValueError(f"sample {b}: {pos.numel()} {OBJ_TOKEN} tokens but {mask_targets[b].shape[0]} mask targets")
            keep = mask_valid[b] if mask_valid is not None else torch.ones(pos.numel(), dtype=torch.bool)
            keep = keep.to(pos.device)
            ids = obj_ids[b] if obj_ids is not None else None
            if self.training and cfg.mask_prompts_per_object > 0 and ids is not None:
                keep = per_object_prompts(keep, ids, cfg.mask_prompts_per_object)
            if self.training and 0 < cfg.max_mask_prompts < int(keep.sum()):
                keep = sample_prompts(keep, ids, cfg.max_mask_prompts)
            if bool(keep.any()):
                out.append((b, keep))
        return out

    def _semantic(self) -> bool:
        return self.sam2 and self.mask_decoder.semantic_head is not None

    def tube_loss(self, tf: "TeacherForcing", rgb, mask_targets, mask_valid,
                  obj_ids, semantic: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Mask-tube losses of each sample's ``[Obj]`` occurrences, weighted by their count (and,
        under ``"semantic"``, SAM2's semantic-head loss where it has one)."""
        cfg = self.config
        presence = self.mask_decoder.has_presence_head
        keys = ["focal", "dice", "iou", "total"] + (["presence"] if presence else [])
        chosen = self._mask_prompts(tf, mask_targets, mask_valid, obj_ids)
        if self.sam2 and (chosen or self._semantic()):
            return self._sam2_tube_loss(tf, rgb, mask_targets, chosen, semantic)
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
        weights = []
        for b, keep in chosen:
            pos = torch.nonzero(tf.ids[b] == self.ids.obj).flatten()
            out = self.mask_decoder.decode(tf.enc.dense[b], self.obj_proj(tf.hidden[b, pos[keep]]))
            losses = mask_losses(out.mask_logits, out.iou_pred, mask_targets[b][keep.to(mask_targets[b].device)],
                                 cfg=cfg.loss, object_logits=out.object_logits if presence else None)
            for k in parts:
                parts[k].append(losses[k])
            weights.append(float(keep.sum()))
        if weights:
            w = torch.tensor(weights, device=tf.hidden.device)
            return {k: (torch.stack(v) * w).sum() / w.sum() for k, v in parts.items()}
        # keep every submodule in the graph (DDP) with an exact zero
        zero = tf.enc.dense.sum() * 0 + sum(p.sum() * 0 for p in self.obj_proj.parameters())
        zero = zero + sum(p.sum() * 0 for p in self.mask_decoder.parameters() if p.requires_grad)
        return {k: zero for k in keys}

    def _train_window(self, t: int) -> slice:
        """Training: a random window of ``mask_decoder.train_frames`` consecutive frames (torch RNG:
        resumable); otherwise, and for clips no longer than it, every frame."""
        w = self.config.mask_decoder.train_frames
        if not self.training or w <= 0 or t <= w:
            return slice(0, t)
        start = int(torch.randint(0, t - w + 1, ()))
        return slice(start, start + w)

    def _idle_prompt_zero(self) -> torch.Tensor:
        """An exact zero over the SAM2 parameters only spatial prompts use: an ``[Obj]``-prompted
        stage leaves them idle, and DDP needs every trainable parameter in the graph."""
        # (with region prompts the mask path is used and no_mask_embed is the idle one: cover the whole encoder)
        idle = self.mask_decoder.spatial_prompt_parameters() | {
            f"sam.sam_prompt_encoder.{n}" for n, _ in self.mask_decoder.sam.sam_prompt_encoder.named_parameters()}
        return sum((p.sum() * 0 for n, p in self.mask_decoder.named_parameters() if n in idle and p.requires_grad),
                   torch.zeros((), device=self.device))

    def _sam2_tube_loss(self, tf: "TeacherForcing", rgb: torch.Tensor, mask_targets,
                        chosen: list[tuple[int, torch.Tensor]], semantic: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """SAM2 decodes every chosen ``[Obj]`` of the batch in one frame-by-frame pass over a
        training window (``mask_decoder.train_frames``) of all the batch's clips."""
        window = self._train_window(rgb.shape[1])
        feats = self.mask_decoder.frame_features(rgb[:, window])
        # computed once: the semantic loss and the region prompts both read them
        sem_logits = self.mask_decoder.semantic_logits(feats) if self._semantic() else None
        extra = {"semantic": _semantic_loss(sem_logits, semantic, window)} if sem_logits is not None else {}
        if not chosen:  # no [Obj] to decode: an exact zero keeps the prompt path in the graph (DDP)
            zero = sum((p.sum() * 0 for p in [*self.obj_proj.parameters(), *self.mask_decoder.parameters()]
                        if p.requires_grad), tf.hidden.sum() * 0)
            keys = ["focal", "dice", "iou", "total"] + (["presence"] if self.mask_decoder.has_presence_head else [])
            return {**{k: zero for k in keys}, **extra}
        prompts, videos, targets, hidden_rows = [], [], [], []
        for b, keep in chosen:
            pos = torch.nonzero(tf.ids[b] == self.ids.obj).flatten()
            hidden_rows.append(tf.hidden[b, pos[keep]])
            prompts.append(self.obj_proj(hidden_rows[-1]))
            videos.append(torch.full((int(keep.sum()),), b, dtype=torch.long))
            targets.append(mask_targets[b][keep.to(mask_targets[b].device)][:, window])
        hidden = torch.cat(hidden_rows)  # [N, H]
        videos = torch.cat(videos)
        regions = self.region_prompts(feats, hidden, videos, semantic_logits=sem_logits)
        out = self.mask_decoder.decode(feats, torch.cat(prompts), videos=videos, time_offset=window.start,
                                       **({"regions": regions} if regions is not None else {}))
        target = torch.cat(targets).to(out.mask_logits.device)
        losses = mask_losses(out.mask_logits, out.iou_pred, target, cfg=self.config.loss,
                             object_logits=out.object_logits if self.mask_decoder.has_presence_head else None)
        losses["total"] = losses["total"] + self._idle_prompt_zero()
        return {**losses, **extra}

    def promptable_loss(self, rgb: torch.Tensor, object_masks: list[torch.Tensor] | None,
                        semantic: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The ``sam2_pretrain`` stage: SAM2's promptable video segmentation on the dense masks of
        every object. A random frame of a random training window conditions: each object present on
        it gets points, a box or its mask there (one kind per step, as SAM2's training draws them),
        and SAM2's memory carries it to the rest of the window, forwards then backwards. With a
        semantic head, its loss on the window's frames is added (``mask_decoder.semantic_loss_weight``)."""
        if not self.sam2:
            raise ConfigError("the sam2_pretrain stage needs self.mask_decoder.kind: sam2")
        if object_masks is None:
            raise DataError(None, "the sam2_pretrain stage needs the batch's object_masks")
        dec = self.mask_decoder
        # evaluation draws from its own fixed generator: the same prompts every time, and the
        # training RNG (resume) untouched
        gen = None if self.training else torch.Generator().manual_seed(0)
        window = self._train_window(rgb.shape[1])
        t = window.stop - window.start
        frame = int(torch.randint(0, t, (), generator=gen))
        kind = PROMPT_KINDS[int(torch.randint(0, len(PROMPT_KINDS), (), generator=gen))]
        masks, videos = [], []
        for b, m in enumerate(object_masks):
            m = m[:, window]  # [N_b, t, S, S]
            present = m[:, frame].flatten(1).any(-1)
            masks.append(m[present])
            videos.append(torch.full((int(present.sum()),), b, dtype=torch.long))
        target = torch.cat(masks).to(rgb.device)
        feats = dec.frame_features(rgb[:, window])
        extra: dict[str, torch.Tensor] = {}
        sem_total = feats.vision_feats[-1].sum() * 0
        if self._semantic():
            extra["loss_sam2_seg"] = _semantic_loss(dec.semantic_logits(feats), semantic, window)
            sem_total = self.config.mask_decoder.semantic_loss_weight * extra["loss_sam2_seg"]
        if target.shape[0] == 0:  # nothing on that frame: an exact zero keeps every parameter in the graph
            zero = sum(p.sum() * 0 for p in dec.parameters() if p.requires_grad) + feats.vision_feats[-1].sum() * 0
            return {"loss": zero + sem_total, "loss_focal": zero, "loss_dice": zero, "loss_iou": zero, **extra}
        prompts = sample_spatial_prompts(target[:, frame].cpu(), image_size=dec.image_size, kind=kind, generator=gen)
        prompts = prompts.to(rgb.device)
        out = dec.propagate_prompted(feats, prompts, frame, videos=torch.cat(videos).to(rgb.device))
        losses = mask_losses(out.mask_logits, out.iou_pred, target, cfg=self.config.loss,
                             object_logits=out.object_logits if dec.has_presence_head else None)
        # the [Obj] prompt path (slots, time embedding) and the rest of the 4D-LLM are idle here
        zero = sum(p.sum() * 0 for n, p in dec.named_parameters() if not n.startswith("sam.") and p.requires_grad)
        return {"loss": losses["total"] + zero + sem_total,
                **{f"loss_{k}": v for k, v in losses.items() if k != "total"}, **extra}
