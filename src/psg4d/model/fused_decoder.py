"""The "fused" mask-tube decoder (``mask_decoder.kind: fused``; checkpoints from before SAM2 was
used as SAM2): SAM2's mask decoder alone, on the scene encoder's dense maps.
Built by :mod:`psg4d.model.fused_decoder_build`.

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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from psg4d.errors import ConfigError
from psg4d.model.merging import sinusoid
from psg4d.model.sam2_tubes import NO_OBJECT_LOGIT  # SAM2's convention, kept by both decoders


@dataclass
class TubeDecoderOutput:
    """What :meth:`TubeDecoder.decode` returns for ``N`` prompts over ``T`` frames of ``h x w`` maps."""

    mask_logits: torch.Tensor  # [N, T, 4h, 4w]
    iou_pred: torch.Tensor  # [N, T]
    object_logits: torch.Tensor  # [N, T] SAM2 object-presence logit (constant 10 without pred_obj_scores)



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
