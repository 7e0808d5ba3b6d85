"""The mask-tube decoder's settings (``model.mask_decoder``): which decoder (``kind``) and its sizes.

Kept apart from the decoders so both builders read it, the fused decoder's
(:mod:`psg4d.model.fused_decoder_build`) and the one that picks between the kinds
(:mod:`psg4d.model.mask_decoder`, which hands these names on), without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from psg4d.errors import ConfigError
from psg4d.model.sam2_build import Sam2Settings

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
