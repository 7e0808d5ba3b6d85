"""Mask-tube decoders: which one a model uses, built from its settings (``model.mask_decoder``).

* ``kind: sam2`` (the presets): SAM2 itself reads the frames (:mod:`psg4d.model.sam2_tubes`,
  built by :mod:`psg4d.model.sam2_build`);
* ``kind: fused`` (the default, so checkpoints from before SAM2 was used as SAM2 load as what they
  are): SAM2's mask decoder alone on the scene encoder's maps (:mod:`psg4d.model.fused_decoder`,
  built by :mod:`psg4d.model.fused_decoder_build`).

The settings live in :mod:`psg4d.model.mask_decoder_config`; they, the fused decoder's classes and
its checkpoint loader are importable from here too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from psg4d.model.fused_decoder import TubeDecoder, TubeDecoderOutput
from psg4d.model.fused_decoder_build import SAM2_PREFIXES, build_fused_decoder, load_sam2_checkpoint
from psg4d.model.mask_decoder_config import MASK_DECODER_KINDS, MaskDecoderConfig
from psg4d.model.sam2_build import build_sam2_tubes
from psg4d.model.sam2_tubes import NO_OBJECT_LOGIT, Sam2Tubes

__all__ = [
    "MASK_DECODER_KINDS", "MaskDecoderConfig", "NO_OBJECT_LOGIT", "SAM2_PREFIXES", "TubeDecoder",
    "TubeDecoderOutput", "build_mask_decoder", "load_sam2_checkpoint", "upsample_to",
]


def build_mask_decoder(cfg: MaskDecoderConfig, *, num_classes: int = 0) -> TubeDecoder | Sam2Tubes:
    """Build the configured decoder (and load SAM2 weights where configured). ``num_classes``:
    the categories (+ unlabelled) of SAM2's semantic head, when ``semantic_loss_weight > 0``."""
    if cfg.kind == "sam2":
        return build_sam2_tubes(cfg.sam2, num_prompt_tokens=cfg.num_prompt_tokens, weights_path=cfg.weights_path,
                                pretrained=cfg.pretrained,
                                num_classes=num_classes if cfg.semantic_loss_weight > 0 else 0)
    return build_fused_decoder(cfg)


def upsample_to(mask_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize ``[..., h, w]`` logits to ``[..., H, W]`` (e.g. the video's frame size)."""
    lead = mask_logits.shape[:-2]
    flat = mask_logits.reshape(-1, 1, *mask_logits.shape[-2:])
    if flat.shape[0] == 0:
        return mask_logits.new_zeros(*lead, *size)
    out = F.interpolate(flat.float(), size=size, mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size).to(mask_logits.dtype)
