"""Building the fused mask-tube decoder (:class:`~psg4d.model.fused_decoder.TubeDecoder`) from SAM2's
modules, and loading a SAM2 checkpoint's weights into it.

Weights: :func:`load_sam2_checkpoint` loads ``sam_mask_decoder.*``,
``sam_prompt_encoder.*`` (and ``memory_attention.*`` where configured) from a
SAM2 checkpoint (``sam2_hiera_*.pt``: a dict with ``"model"``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from psg4d.errors import CheckpointError, ConfigError
from psg4d.model.fused_decoder import TubeDecoder
from psg4d.model.mask_decoder_config import MaskDecoderConfig
from psg4d.model.provenance import mark_pretrained

log = logging.getLogger(__name__)


def _sam2():
    """Import SAM2's modules (thin wrapper so a missing package is a clear error)."""
    try:
        from sam2.modeling.memory_attention import MemoryAttention, MemoryAttentionLayer
        from sam2.modeling.sam.mask_decoder import MaskDecoder
        from sam2.modeling.sam.prompt_encoder import PromptEncoder
        from sam2.modeling.sam.transformer import RoPEAttention, TwoWayTransformer
    except ImportError as e:
        raise ConfigError("the mask decoder needs the sam2 package (pip install 'psg4d[sam2]')") from e
    return MaskDecoder, PromptEncoder, TwoWayTransformer, MemoryAttention, MemoryAttentionLayer, RoPEAttention


def _build_memory_attention(cfg: MaskDecoderConfig) -> nn.Module:
    """SAM2's MemoryAttention with the layer layout of the released configs."""
    _, _, _, MemoryAttention, MemoryAttentionLayer, RoPEAttention = _sam2()
    d = cfg.transformer_dim
    feat = (cfg.grid, cfg.grid)
    layer = MemoryAttentionLayer(
        activation="relu",
        cross_attention=RoPEAttention(
            embedding_dim=d, num_heads=cfg.memory_heads, downsample_rate=1, dropout=0.1,
            kv_in_dim=cfg.memory_dim, rope_theta=10000.0, feat_sizes=feat, rope_k_repeat=True,
        ),
        d_model=d,
        dim_feedforward=cfg.memory_ffn_dim,
        dropout=0.1,
        pos_enc_at_attn=False,
        pos_enc_at_cross_attn_keys=True,
        pos_enc_at_cross_attn_queries=False,
        self_attention=RoPEAttention(
            embedding_dim=d, num_heads=cfg.memory_heads, downsample_rate=1, dropout=0.1,
            rope_theta=10000.0, feat_sizes=feat,
        ),
    )
    return MemoryAttention(d_model=d, pos_enc_at_input=True, layer=layer, num_layers=cfg.memory_layers)


def build_fused_decoder(cfg: MaskDecoderConfig) -> TubeDecoder:
    """The fused decoder sized by ``cfg`` (``kind: fused``), with SAM2 weights loaded where configured."""
    MaskDecoder, PromptEncoder, TwoWayTransformer, _, _, _ = _sam2()
    if cfg.transformer_dim % 8 or cfg.transformer_dim % cfg.num_heads:
        raise ConfigError(
            f"mask_decoder.transformer_dim ({cfg.transformer_dim}) must be divisible by 8 and by num_heads ({cfg.num_heads})"
        )
    d = cfg.transformer_dim
    prompt_encoder = PromptEncoder(
        embed_dim=d,
        image_embedding_size=(cfg.grid, cfg.grid),
        input_image_size=(16 * cfg.grid, 16 * cfg.grid),
        mask_in_chans=16,
    )
    mask_decoder = MaskDecoder(
        transformer_dim=d,
        transformer=TwoWayTransformer(depth=cfg.depth, embedding_dim=d, num_heads=cfg.num_heads, mlp_dim=cfg.mlp_dim),
        num_multimask_outputs=cfg.num_multimask_outputs,
        iou_head_depth=3,
        iou_head_hidden_dim=cfg.iou_head_hidden_dim,
        use_high_res_features=False,
        iou_prediction_use_sigmoid=True,
        pred_obj_scores=cfg.pred_obj_scores,
        pred_obj_scores_mlp=cfg.pred_obj_scores_mlp,
        use_multimask_token_for_obj_ptr=True,
    )
    memory_attention = memory_proj = None
    if cfg.memory_layers > 0:
        memory_attention = _build_memory_attention(cfg)
        memory_proj = nn.Linear(d, cfg.memory_dim)
    decoder = TubeDecoder(
        input_proj=nn.Conv2d(cfg.in_dim, d, kernel_size=1),
        prompt_encoder=prompt_encoder,
        mask_decoder=mask_decoder,
        memory_attention=memory_attention,
        memory_proj=memory_proj,
        num_prompt_tokens=cfg.num_prompt_tokens,
        memory_window=cfg.memory_window,
        max_batch=cfg.max_batch,
    )
    if cfg.pretrained:
        if not cfg.weights_path:
            raise ConfigError("mask_decoder.weights_path: pretrained=true needs a SAM2 checkpoint (sam2_hiera_*.pt)")
        load_sam2_checkpoint(decoder, cfg.weights_path)
    return decoder


# SAM2 checkpoint prefix -> TubeDecoder attribute.
SAM2_PREFIXES: dict[str, str] = {
    "sam_mask_decoder.": "mask_decoder",
    "sam_prompt_encoder.": "prompt_encoder",
    "memory_attention.": "memory_attention",
}
# Checkpoint tensors this decoder has no module for: the high-res skip convs act on
# Hiera's stride-4/8 features, which our encoders do not produce.
_SAM2_UNUSED = ("sam_mask_decoder.conv_s0.", "sam_mask_decoder.conv_s1.")


def load_sam2_checkpoint(decoder: TubeDecoder, path: str | Path) -> dict[str, list[str]]:
    """Load SAM2 decoder/prompt-encoder (and memory-attention) weights into ``decoder``.

    Every parameter of the loaded submodules must be present with the right
    shape; returns ``{"loaded": [...], "skipped": [...]}`` (checkpoint key names).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: SAM2 checkpoint not found")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{path}: not a SAM2 checkpoint (expected a dict with 'model')")
    sd = ckpt["model"]
    loaded: list[str] = []
    skipped: list[str] = []
    for prefix, attr in SAM2_PREFIXES.items():
        module = getattr(decoder, attr)
        part = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix) and not k.startswith(_SAM2_UNUSED)}
        if module is None:
            skipped.extend(prefix + k for k in part)
            continue
        own = module.state_dict()
        missing = sorted(set(own) - set(part))
        unexpected = sorted(set(part) - set(own))
        bad = sorted(k for k in set(own) & set(part) if own[k].shape != part[k].shape)
        if missing or unexpected or bad:
            raise CheckpointError(
                f"{path}: {prefix}* does not fit the configured decoder: missing {missing[:6]}, "
                f"unexpected {unexpected[:6]}, shape mismatch {bad[:6]}"
            )
        module.load_state_dict(part, strict=True)
        mark_pretrained(module, part, source=path)
        loaded.extend(prefix + k for k in part)
    skipped.extend(k for k in sd if k.startswith(_SAM2_UNUSED))
    if not loaded:
        raise CheckpointError(f"{path}: no sam_mask_decoder.* / sam_prompt_encoder.* tensors found")
    log.info("loaded %d SAM2 tensors from %s (skipped %d)", len(loaded), path, len(skipped))
    return {"loaded": loaded, "skipped": skipped}
