"""Mask-tube decoders: SAM2 itself (``kind: sam2``, :mod:`psg4d.model.sam2_tubes`) or the earlier
"fused" decoder described here (``kind: fused``; checkpoints from before SAM2 was used as SAM2).

The fused decoder is built from SAM2's mask decoder alone.

For each object prompt (an ``[Obj]`` hidden state projected to the decoder
width by the assembler) and each frame, SAM2's two-way-transformer
:class:`~sam2.modeling.sam.mask_decoder.MaskDecoder` predicts one mask and an
IoU estimate against that frame's dense feature map. All ``N x T`` pairs go
through the decoder in one batched call (or in chunks of ``max_batch``).

Prompt -> SAM2 sparse prompt tokens (``num_prompt_tokens`` of them):

- token 0: ``prompt + slot_0`` (the object's identity, the same on every frame);
- token 1: ``prompt + slot_1 + time(t)``, with ``time(t)`` a sinusoid of the
  frame index through a learned, zero-initialised linear map, so the prompt
  can specialise per frame (e.g. to predict an empty mask where the object is
  absent) while starting out time-invariant.

The dense positional encoding and the "no mask" dense prompt come from SAM2's
:class:`~sam2.modeling.sam.prompt_encoder.PromptEncoder`. A 1x1 conv maps the
encoder's dense width ``in_dim`` to ``transformer_dim``.

Optional temporal propagation (``memory_layers > 0``): SAM2's
:class:`~sam2.modeling.memory_attention.MemoryAttention` conditions each frame's
map on the maps of the ``memory_window`` previous frames (projected to
``memory_dim``, SAM2's memory width), before decoding. This propagates
*features* over time, object-agnostically, so it stays one batched call; it
does not feed predicted masks back as SAM2's video predictor does. It is off
for the tiny preset (it roughly doubles decoder cost on CPU).

With ``pred_obj_scores`` (the ``full`` preset, as in SAM2) the decoder also
predicts a per-frame object-presence logit: :meth:`TubeDecoder.decode` returns
it, the 4D-LLM supervises it (``mask_losses(..., object_logits=...)``) and
:meth:`TubeDecoder.gate_absent` empties the masks of frames it scores absent
(logit < 0), as SAM2's video model does.

Weights: :func:`load_sam2_checkpoint` loads ``sam_mask_decoder.*``,
``sam_prompt_encoder.*`` (and ``memory_attention.*`` where configured) from a
SAM2 checkpoint (``sam2_hiera_*.pt``: a dict with ``"model"``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from psg4d.errors import CheckpointError, ConfigError
from psg4d.model.merging import sinusoid
from psg4d.model.sam2_build import Sam2Settings, build_sam2_tubes
from psg4d.model.sam2_tubes import Sam2Tubes
from psg4d.model.provenance import mark_pretrained

log = logging.getLogger(__name__)


MASK_DECODER_KINDS = ("sam2", "fused")


@dataclass
class MaskDecoderConfig:
    """Decoder settings. ``kind: sam2`` (the presets): SAM2 as SAM2, :attr:`sam2` says which;
    ``kind: fused`` (the default, so checkpoints written before ``kind`` existed load as what
    they are): SAM2's mask decoder on the scene encoder's maps, sized by the fields below."""

    kind: str = "fused"
    sam2: Sam2Settings = field(default_factory=Sam2Settings)
    # kind sam2, training: each sample's tubes are decoded over a random window of this many
    # consecutive model frames (0: all), as SAM2 trains on 8-frame clips; inference decodes all
    train_frames: int = 8
    # kind sam2: weight of a dense category loss on SAM2's own image features (a 1x1 head per
    # level, outside SAM2); > 0 teaches a SAM2 trained from scratch where each category is
    semantic_loss_weight: float = 0.0
    # kind sam2: every frame's [Obj] prompt also gets a mask prompt, the semantic head's map of the
    # category the [Obj] state names (obj_cls_head): where to look, which the [Obj] tokens lack
    region_prompt: bool = False
    in_dim: int = 64  # encoder width D (channels of the dense maps)
    transformer_dim: int = 64
    num_heads: int = 4
    mlp_dim: int = 256
    depth: int = 2
    iou_head_hidden_dim: int = 64
    num_multimask_outputs: int = 3
    pred_obj_scores: bool = False
    pred_obj_scores_mlp: bool = False
    grid: int = 16  # nominal dense-map size (maps of any size are accepted)
    num_prompt_tokens: int = 2
    memory_layers: int = 0
    memory_dim: int = 64
    memory_window: int = 2
    memory_heads: int = 1
    memory_ffn_dim: int = 256
    max_batch: int = 0  # >0: decode at most this many (object, frame) pairs per call
    pretrained: bool = False
    weights_path: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in MASK_DECODER_KINDS:
            raise ConfigError(f"model.mask_decoder.kind must be one of {MASK_DECODER_KINDS}, got {self.kind!r}")
        if self.train_frames < 0:
            raise ConfigError(f"model.mask_decoder.train_frames must be >= 0, got {self.train_frames}")
        if self.semantic_loss_weight < 0 or (self.semantic_loss_weight > 0 and self.kind != "sam2"):
            raise ConfigError("model.mask_decoder.semantic_loss_weight must be >= 0, and > 0 only with kind: sam2,"
                              f" got {self.semantic_loss_weight} with kind {self.kind!r}")
        if self.region_prompt and self.semantic_loss_weight <= 0:
            raise ConfigError("model.mask_decoder.region_prompt needs the semantic head (semantic_loss_weight > 0)")

    @classmethod
    def sam2_tiny(cls) -> "MaskDecoderConfig":
        """The tiny SAM2 (``sam2.1_hiera_t.yaml`` shrunk by :data:`~psg4d.model.sam2_build.SAM2_SIZES`)."""
        return cls(kind="sam2", sam2=Sam2Settings())

    @classmethod
    def sam2_full(cls) -> "MaskDecoderConfig":
        """SAM2.1 Hiera-L as released: the whole checkpoint, its trunk frozen."""
        return cls(
            kind="sam2",
            sam2=Sam2Settings(config="configs/sam2.1/sam2.1_hiera_l.yaml", size="official", image_size=1024,
                              frozen=["image_encoder.trunk"]),
            train_frames=8,
            pretrained=True,
            weights_path="checkpoints/sam2.1_hiera_large.pt",
        )

    @classmethod
    def full(cls) -> "MaskDecoderConfig":
        """SAM2 (hiera_*) decoder sizes; loads the SAM2 checkpoint's decoder/prompt/memory weights."""
        return cls(
            in_dim=1024,
            transformer_dim=256,
            num_heads=8,
            mlp_dim=2048,
            depth=2,
            iou_head_hidden_dim=256,
            pred_obj_scores=True,
            pred_obj_scores_mlp=True,
            grid=16,
            memory_layers=4,
            memory_dim=64,
            memory_heads=1,
            memory_ffn_dim=2048,
            max_batch=64,
            pretrained=True,
            weights_path="checkpoints/sam2_hiera_large.pt",
        )


@dataclass
class TubeDecoderOutput:
    mask_logits: torch.Tensor  # [N, T, 4h, 4w]
    iou_pred: torch.Tensor  # [N, T]
    object_logits: torch.Tensor  # [N, T] SAM2 object-presence logit (constant 10 without pred_obj_scores)


# SAM2's mask logit for "no object" (``sam2.modeling.sam2_base.NO_OBJ_SCORE``): far below any threshold.
NO_OBJECT_LOGIT = -1024.0


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


class TubeDecoder(nn.Module):
    """``forward(dense [T, C, h, w], prompts [N, D]) -> (mask_logits [N, T, 4h, 4w], iou_pred [N, T])``."""

    def __init__(
        self,
        *,
        input_proj: nn.Module,
        prompt_encoder: nn.Module,
        mask_decoder: nn.Module,
        memory_attention: nn.Module | None = None,
        memory_proj: nn.Module | None = None,
        num_prompt_tokens: int = 2,
        memory_window: int = 2,
        max_batch: int = 0,
    ):
        super().__init__()
        if num_prompt_tokens not in (1, 2):
            raise ConfigError(f"mask_decoder.num_prompt_tokens must be 1 or 2, got {num_prompt_tokens}")
        if (memory_attention is None) != (memory_proj is None):
            raise ConfigError("memory_attention and memory_proj must be given together")
        self.input_proj = input_proj
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.memory_attention = memory_attention
        self.memory_proj = memory_proj
        self.memory_window = memory_window
        self.max_batch = max_batch
        dim = mask_decoder.transformer_dim
        self.dim = dim
        self.num_prompt_tokens = num_prompt_tokens
        self.slot_embed = nn.Parameter(torch.zeros(num_prompt_tokens, dim))
        nn.init.normal_(self.slot_embed, std=0.02)
        self.time_proj = nn.Linear(dim, dim)
        nn.init.zeros_(self.time_proj.weight)
        nn.init.zeros_(self.time_proj.bias)
        # Point/box embeddings and the mask-prompt convs exist only so SAM2 checkpoints
        # load strictly; they never run here, and trainable-but-unused parameters
        # break DistributedDataParallel's gradient bookkeeping.
        for name, p in self.prompt_encoder.named_parameters():
            if not name.startswith("no_mask_embed"):
                p.requires_grad_(False)

    @property
    def has_presence_head(self) -> bool:
        return bool(self.mask_decoder.pred_obj_scores)

    def unused_parameters(self) -> set[str]:
        """Parameters that never run (the point/box/mask prompt paths of SAM2's prompt encoder)."""
        return {f"prompt_encoder.{n}" for n, _ in self.prompt_encoder.named_parameters()
                if not n.startswith("no_mask_embed")}

    def gate_absent(self, out: TubeDecoderOutput) -> torch.Tensor:
        """``out.mask_logits`` with frames the presence head scores absent set to "no object"."""
        if not self.has_presence_head:
            return out.mask_logits
        absent = (out.object_logits < 0)[..., None, None]  # [N, T, 1, 1]
        return out.mask_logits.masked_fill(absent, NO_OBJECT_LOGIT)

    # -------------------------------------------------------------- pieces
    def dense_pe(self, hw: tuple[int, int]) -> torch.Tensor:
        """SAM2's random-Fourier positional encoding for an ``h x w`` map: ``[1, D, h, w]``."""
        pe_layer = self.prompt_encoder.pe_layer
        if pe_layer.positional_encoding_gaussian_matrix.dtype != torch.float32:
            # SAM2 builds float32 grid coordinates; after model.to(bf16) the frequency
            # buffer would no longer match them, and float32 is what it was trained in.
            pe_layer.positional_encoding_gaussian_matrix = pe_layer.positional_encoding_gaussian_matrix.float()
        return pe_layer(hw).unsqueeze(0)

    def prompt_tokens(self, prompts: torch.Tensor, t: int) -> torch.Tensor:
        """``[N, D] -> [N, T, K, D]`` sparse prompt embeddings (see module docstring)."""
        n, d = prompts.shape
        frames = torch.arange(t, device=prompts.device)
        time = self.time_proj(sinusoid(frames, d).to(prompts.dtype))  # [T, D]
        base = prompts[:, None, None, :] + self.slot_embed[None, None]  # [N, 1, K, D]
        base = base.expand(n, t, self.num_prompt_tokens, d)
        if self.num_prompt_tokens == 1:
            return base + time[None, :, None, :]
        return torch.cat([base[:, :, :1], base[:, :, 1:] + time[None, :, None, :]], dim=2)

    def propagate(self, src: torch.Tensor) -> torch.Tensor:
        """Condition every frame's map on its ``memory_window`` predecessors: ``[T, D, h, w]``."""
        if self.memory_attention is None:
            return src
        t, d, h, w = src.shape
        pe = self.dense_pe((h, w)).to(src.dtype)  # [1, D, h, w]
        curr = src.flatten(2).permute(2, 0, 1)  # [hw, T, D]
        curr_pos = pe.flatten(2).permute(2, 0, 1).expand(-1, t, -1)  # [hw, T, D]
        mem_all = self.memory_proj(curr)  # [hw, T, Dm]
        mem_pos_all = self.memory_proj(curr_pos)  # [hw, T, Dm]; same projection keeps pos aligned
        # Frame t remembers t-1..t-k; the first frames repeat frame 0 (SAM2's "no past" case).
        idx = (torch.arange(t, device=src.device)[:, None] - torch.arange(1, self.memory_window + 1, device=src.device)).clamp(min=0)
        memory = mem_all[:, idx]  # [hw, T, k, Dm]
        memory = memory.permute(2, 0, 1, 3).reshape(self.memory_window * h * w, t, -1)  # [k*hw, T, Dm]
        memory_pos = mem_pos_all[:, idx].permute(2, 0, 1, 3).reshape(self.memory_window * h * w, t, -1)
        out = self.memory_attention(curr=curr, memory=memory, curr_pos=curr_pos, memory_pos=memory_pos)
        return out.permute(1, 2, 0).reshape(t, d, h, w)

    # ------------------------------------------------------------- forward
    def decode(self, dense: torch.Tensor, prompts: torch.Tensor) -> TubeDecoderOutput:
        if dense.dim() != 4:
            raise ValueError(f"dense must be [T, C, h, w], got {tuple(dense.shape)}")
        if prompts.dim() != 2 or prompts.shape[1] != self.dim:
            raise ValueError(f"prompts must be [N, {self.dim}], got {tuple(prompts.shape)}")
        t, _, h, w = dense.shape
        n = prompts.shape[0]
        src = self.propagate(self.input_proj(dense))  # [T, D, h, w]
        out_hw = (4 * h, 4 * w)  # SAM2's output upscaling is two stride-2 transposed convs
        if n == 0:
            empty = src.new_zeros(0, t)
            return TubeDecoderOutput(src.new_zeros(0, t, *out_hw), empty, empty)
        pe = self.dense_pe((h, w)).to(src.dtype)  # [1, D, h, w]
        sparse = self.prompt_tokens(prompts.to(src.dtype), t).reshape(n * t, self.num_prompt_tokens, -1)
        images = src.unsqueeze(0).expand(n, -1, -1, -1, -1).reshape(n * t, -1, h, w)  # [N*T, D, h, w]
        no_mask = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).to(src.dtype)
        step = self.max_batch if self.max_batch > 0 else n * t
        masks, ious, objs = [], [], []
        for s in range(0, n * t, step):
            chunk = images[s : s + step]
            m, iou, _, obj = self.mask_decoder(
                image_embeddings=chunk,
                image_pe=pe,
                sparse_prompt_embeddings=sparse[s : s + step],
                dense_prompt_embeddings=no_mask.expand(chunk.shape[0], -1, h, w),
                multimask_output=False,
                repeat_image=False,
            )
            masks.append(m[:, 0])
            ious.append(iou[:, 0])
            objs.append(obj[:, 0])
        return TubeDecoderOutput(
            mask_logits=torch.cat(masks).reshape(n, t, *out_hw),
            iou_pred=torch.cat(ious).reshape(n, t),
            object_logits=torch.cat(objs).reshape(n, t),
        )

    def forward(self, dense: torch.Tensor, prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.decode(dense, prompts)
        return out.mask_logits, out.iou_pred


def upsample_to(mask_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize ``[..., h, w]`` logits to ``[..., H, W]`` (e.g. the video's frame size)."""
    lead = mask_logits.shape[:-2]
    flat = mask_logits.reshape(-1, 1, *mask_logits.shape[-2:])
    if flat.shape[0] == 0:
        return mask_logits.new_zeros(*lead, *size)
    out = F.interpolate(flat.float(), size=size, mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size).to(mask_logits.dtype)


def build_mask_decoder(cfg: MaskDecoderConfig, *, num_classes: int = 0) -> TubeDecoder | Sam2Tubes:
    """Build the configured decoder (and load SAM2 weights where configured). ``num_classes``:
    the categories (+ unlabelled) of SAM2's semantic head, when ``semantic_loss_weight > 0``."""
    if cfg.kind == "sam2":
        return build_sam2_tubes(cfg.sam2, num_prompt_tokens=cfg.num_prompt_tokens, weights_path=cfg.weights_path,
                                pretrained=cfg.pretrained,
                                num_classes=num_classes if cfg.semantic_loss_weight > 0 else 0)
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
