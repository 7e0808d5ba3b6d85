"""``ModelConfig``: every setting of the 4D-LLM, and the named presets.

:data:`MODEL_PRESETS` is the explicit table:

* ``tiny`` — tiny encoder + random 4-layer Llama with the word-level tokenizer +
  tiny SAM2-style decoder on the scene encoder's maps (``mask_decoder.kind: fused``); trains on CPU
  in seconds.
* ``tiny-sam2`` — ``tiny`` with SAM2 as SAM2 (:mod:`psg4d.model.sam2_tubes`: a tiny SAM2 from the
  package's config, its own image encoder, memory across all 16 frames), every object supervised;
  trained after a ``sam2_pretrain`` stage (``configs/hoi_tiny_sam2.yaml``).
* ``smollm2-135m`` — tiny encoder/decoder, the pretrained SmolLM2-135M-Instruct
  trained through LoRA.
* ``full`` — the paper's sizes: ImageBind-Huge RGB and depth branches,
  LLaMA-2-7B from a local folder (``checkpoints/llama-2-7b-hf``, LoRA), SAM2.1
  Hiera-L as released (``checkpoints/sam2.1_hiera_large.pt``, the whole model, trunk frozen).

``image_size`` and ``num_visual_tokens`` are the model-level truth: the encoder
built from this config gets them (``resolved_encoder``), so an override such as
``model.image_size=96`` cannot leave the encoder and collator disagreeing.
``object_vocab``/``predicate_vocab`` are filled from the training data: they
seed the ``tiny`` tokenizer, let the grammar split predicate from object words,
and give the predictor its alternative predicates.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from typing import Callable

from psg4d.config import did_you_mean
from psg4d.data.time_reversal import REVERSAL_TABLES
from psg4d.errors import ConfigError
from psg4d.model.encoder import EncoderConfig
from psg4d.model.estimators import TransferConfig
from psg4d.model.llm import LLMConfig
from psg4d.model.losses import LossConfig
from psg4d.model.mask_decoder_config import MaskDecoderConfig
from psg4d.model.projector import ProjectorConfig
from psg4d.model.region import RegionConfig


TAG_SOURCES = ("head", "segmentation")
#: where an attribute head's size and shape words come from (model.attribute_form)
ATTRIBUTE_FORMS = ("map", "geometry", "both")


@dataclass
class ModelConfig:
    preset: str = "tiny"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    mask_decoder: MaskDecoderConfig = field(default_factory=MaskDecoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    # the 2D-to-4D transfer's estimators and the training stage's objective / pathway
    transfer: TransferConfig = field(default_factory=TransferConfig)
    text_loss_weight: float = 1.0
    mask_loss_weight: float = 1.0
    num_visual_tokens: int = 64
    max_frames: int = 8
    image_size: int = 64
    max_new_tokens: int = 256
    # [Obj] occurrences decoded into tubes per training sample (a random subset; 0: all).
    # Each object is mentioned in several triplets, so a few prompts per video carry the
    # mask signal at a fraction of the decoder's cost, which dominates a tiny model's step.
    max_mask_prompts: int = 0
    # [Obj] occurrences of one object decoded per training sample (a random subset; 0: all):
    # every object is supervised, its mentions take turns
    mask_prompts_per_object: int = 0
    # Every gold object with a tube gets a mask in training: objects no triplet mentions are
    # teacher-forced after the text ("<eos> ; mug [Obj]", not learned as text), the way the
    # predictor asks for a tagged object the generation did not mention.
    supervise_all_objects: bool = False
    # Weight of the auxiliary tagging loss: a linear head on the projected visual tokens
    # predicts which object categories the video contains (max over tokens, multi-label
    # BCE). It makes visual tokens carry category evidence early in training, before the
    # LLM has learned to read them; otherwise a randomly initialised LLM settles on the
    # training set's most frequent graph. 0 disables the head (no parameters).
    tag_loss_weight: float = 0.0
    # Training only: probability of replacing each teacher-forced scene-graph input token
    # (not [Obj], not the labels) by the unknown token. A small LLM trained from scratch
    # otherwise learns to continue memorised graphs from their first words and never needs
    # to read the visual tokens.
    input_token_dropout: float = 0.0
    # Object tags as LLM input (Oscar-style): the tagging head's K most probable categories
    # enter after the visual tokens, each as its name's mean word embedding scaled by its
    # probability, so the LLM can copy category words instead of first learning to decode
    # them from visual features. 0: off. Needs tag_loss_weight > 0.
    tag_tokens: int = 0
    # Weight of the auxiliary dense segmentation loss: a 1x1 conv head on the encoder's
    # per-frame maps predicts each cell's object category (soft cross-entropy against
    # the area fraction of every category in the cell; class-balanced). Every pixel is
    # labelled, so it teaches a from-scratch encoder to tell small objects apart far
    # faster than the mask or tag losses, whose signal arrives through the LLM or a max
    # over tokens. Both the mask decoder (which must find "the mug" in the maps) and the
    # visual tokens (pooled from the same maps) read those features. 0: no head.
    seg_loss_weight: float = 0.0
    # Object tags as *words* in the prompt (Oscar-style): ``objects : mug , jar scene graph :``.
    # The tags are always the model's own predictions (tag_source below), in training too,
    # never the ground truth: a prompt holds nothing inference could not have written. In
    # training each predicted tag is dropped with probability tag_word_noise, so the LLM
    # learns to find objects the tags missed in the visual tokens. Needs tag_loss_weight > 0.
    tag_words: bool = False
    tag_threshold: float = 0.5
    tag_word_noise: float = 0.1
    # Which head picks the tags at inference: "head" (the tagging head, probability >=
    # tag_threshold) or "segmentation" (the dense segmentation head: categories that are the
    # per-cell argmax over at least tag_min_area of the frame, averaged over the model frames).
    # The segmentation head sees every cell, the tagging head only a max over tokens, so small
    # objects reach it more easily (the measured comparison is in BENCHMARKS.md).
    tag_source: str = "head"
    tag_min_area: float = 0.006
    # Weight of an auxiliary category classifier on each [Obj] hidden state (cross-entropy
    # over object_vocab). The LLM's last layer is shaped for the next token (the predicate),
    # which does not depend on the object's category, so without it the [Obj] states of
    # different objects are nearly identical and the mask decoder cannot tell which object
    # to segment. 0: no head.
    obj_cls_loss_weight: float = 0.0
    # Training only: the share of real clips played backwards (frames, tubes and spans reversed,
    # predicates swapped by the table named time_reversal_table, psg4d.data.time_reversal).
    # Picking up and putting down differ only in the order of the frames, so a model trained
    # this way cannot describe a clip from its first frame alone. 0: off.
    time_reversal: float = 0.0
    time_reversal_table: str = "synthetic"
    # Region feedback (psg4d.model.region): after every [Obj], one input position holds the
    # object's decoded tube read from the scene encoder's maps, so what follows the [Obj] is
    # conditioned on what that object does across the frames.
    region: RegionConfig = field(default_factory=RegionConfig)
    object_vocab: list[str] = field(default_factory=list)
    predicate_vocab: list[str] = field(default_factory=list)
    # Chained scene-graph text (psg4d.model.chain_text): the share of training samples written as the
    # four chained steps instead of the direct grammar (0: direct only). A model trained on both
    # predicts either way (`psg4d predict --mode direct|chain`).
    chain_prob: float = 0.0
    # Longest answer of one chain step at inference.
    chain_step_tokens: int = 160
    # The descriptions the training graphs give each category (filled from the data, like
    # object_vocab): a description outside them is of an object training never named.
    category_descriptions: dict[str, list[str]] = field(default_factory=dict)
    # Attributes read from the frames (psg4d.model.attributes): one per-cell classifier per field
    # of the synthetic world's descriptions (size, colour, shape, pattern, pattern colour) over the
    # scene encoder's map and the frame's colours, trained from the per-pixel category maps and
    # category_descriptions. The chained predictor reads each tube's description with it: a
    # description training never connected to a category is an unknown object. 0: no head.
    attribute_loss_weight: float = 0.0
    # Where the size and shape words come from: "map" (the attribute head's cells, like every field),
    # "geometry" (psg4d.model.form_geometry: measured from the tube's depth, where a video has depth
    # and intrinsics; the head's cells elsewhere) or "both" (the two readings' log-probabilities added).
    attribute_form: str = "map"

    def __post_init__(self) -> None:
        if not 0.0 <= self.time_reversal <= 1.0:
            raise ConfigError(f"model.time_reversal ({self.time_reversal}) must be in [0, 1]")
        if self.time_reversal_table not in REVERSAL_TABLES:
            raise ConfigError(f"model.time_reversal_table: unknown table {self.time_reversal_table!r}; "
                              f"options: {sorted(REVERSAL_TABLES)}")
        if self.region.enabled and self.chain_prob > 0:
            raise ConfigError("model.region.enabled with model.chain_prob > 0: the chained grammar does not "
                              "carry region feedback yet; train the chain without it")
        if self.attribute_form not in ATTRIBUTE_FORMS:
            raise ConfigError(f"model.attribute_form: {self.attribute_form!r} is not one of {ATTRIBUTE_FORMS}")
        if not 0.0 <= self.chain_prob <= 1.0 or self.chain_step_tokens < 1:
            raise ConfigError(f"model.chain_prob ({self.chain_prob}) must be in [0, 1] and "
                              f"model.chain_step_tokens ({self.chain_step_tokens}) >= 1")
        if self.max_frames < 1 or self.image_size < 8 or self.num_visual_tokens < 1:
            raise ConfigError(
                f"model: max_frames ({self.max_frames}), image_size ({self.image_size}) and "
                f"num_visual_tokens ({self.num_visual_tokens}) must be positive (image_size >= 8)"
            )
        if (self.tag_tokens > 0 or self.tag_words) and self.tag_loss_weight <= 0:
            raise ConfigError(
                "model.tag_tokens / model.tag_words need model.tag_loss_weight > 0 (the tagging head picks the tags)"
            )
        for name in ("text_loss_weight", "mask_loss_weight", "tag_loss_weight", "seg_loss_weight", "obj_cls_loss_weight",
                     "attribute_loss_weight"):
            value = getattr(self, name, 0.0)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"model.{name}: must be a finite number >= 0, got {value!r}")
        if self.max_new_tokens < 1 or self.max_mask_prompts < 0 or self.mask_prompts_per_object < 0:
            raise ConfigError(
                f"model.max_new_tokens ({self.max_new_tokens}) must be >= 1 and "
                f"model.max_mask_prompts ({self.max_mask_prompts}) and model.mask_prompts_per_object"
                f" ({self.mask_prompts_per_object}) >= 0"
            )
        if self.tag_source not in TAG_SOURCES:
            raise ConfigError(f"model.tag_source must be one of {TAG_SOURCES}, got {self.tag_source!r}")
        if self.tag_words and self.tag_source == "segmentation" and self.seg_loss_weight <= 0:
            raise ConfigError("model.tag_source=segmentation needs model.seg_loss_weight > 0 (the segmentation head)")
        if not 0.0 <= self.tag_word_noise <= 1.0 or not 0.0 < self.tag_threshold < 1.0:
            raise ConfigError(
                f"model.tag_word_noise ({self.tag_word_noise}) must be in [0, 1] and "
                f"model.tag_threshold ({self.tag_threshold}) in (0, 1)"
            )
        if self.mask_decoder.kind == "fused" and self.mask_decoder.in_dim != self.encoder.dim:
            raise ConfigError(
                f"model.mask_decoder.in_dim ({self.mask_decoder.in_dim}) must equal "
                f"model.encoder.dim ({self.encoder.dim})"
            )

    def resolved_encoder(self) -> EncoderConfig:
        return replace(self.encoder, image_size=self.image_size, max_tokens=self.num_visual_tokens)

    def vocab_words(self) -> list[str]:
        """Words that seed the ``tiny`` tokenizer (a chained model adds its prompts', the
        description attributes' and object numbers)."""
        words = [*self.object_vocab, *self.predicate_vocab]
        if self.chain_prob > 0:
            from psg4d.data.descriptions import description_words
            from psg4d.model.chain_text import CHAIN_WORDS, ChainTemplates

            described = [d for ds in self.category_descriptions.values() for d in ds]
            words += [*ChainTemplates.load().words(), *CHAIN_WORDS, *description_words(), *described]
        return words


def _tiny() -> ModelConfig:
    # merge_grid 8: 8x8 cells of 8x8 pixels per frame before temporal merging; 4x4 cells of
    # 16x16 pixels averaged the synthetic world's small objects (5-15 px) into the table.
    return ModelConfig(
        preset="tiny",
        encoder=EncoderConfig(merge_grid=8),
        max_mask_prompts=8,
        tag_loss_weight=1.0,
        seg_loss_weight=1.0,
        tag_words=True,
        tag_source="segmentation",
        obj_cls_loss_weight=1.0,
    )


def _tiny_sam2() -> ModelConfig:
    # The tiny 4D-LLM with SAM2 as SAM2 (a tiny SAM2 from the package's sam2.1_hiera_t config, its own
    # image encoder on all 16 frames, memory across frames), every object supervised. Not yet the
    # tiny default: at the demo's budget it trains ~3x slower per step (BENCHMARKS.md).
    cfg = _tiny()
    cfg.preset = "tiny-sam2"
    # SAM2 trained from scratch learns categories from a dense loss on its own features, and each
    # [Obj] prompt carries its category's region as a mask prompt (BENCHMARKS.md: without them
    # several categories got no mask at all)
    cfg.mask_decoder = replace(MaskDecoderConfig.sam2_tiny(), semantic_loss_weight=1.0, region_prompt=True)
    cfg.max_frames = 16
    cfg.max_mask_prompts = 0
    cfg.mask_prompts_per_object = 1
    cfg.supervise_all_objects = True
    return cfg


def _smollm2() -> ModelConfig:
    return ModelConfig(
        preset="smollm2-135m",
        llm=LLMConfig(name="smollm2-135m", freeze_llm=True, lora_rank=16, lora_alpha=32),
    )


def _full() -> ModelConfig:
    enc = EncoderConfig.full()
    return ModelConfig(
        preset="full",
        encoder=enc,
        projector=ProjectorConfig(name="mlp2x_gelu"),
        llm=LLMConfig(
            name="checkpoints/llama-2-7b-hf",
            freeze_llm=True,
            lora_rank=64,
            lora_alpha=128,
            lora_dropout=0.05,
            max_position_embeddings=4096,
        ),
        mask_decoder=MaskDecoderConfig.sam2_full(),
        mask_prompts_per_object=1,
        supervise_all_objects=True,
        num_visual_tokens=enc.max_tokens,
        image_size=enc.image_size,
        max_frames=32,
        max_new_tokens=512,
    )


MODEL_PRESETS: dict[str, Callable[[], ModelConfig]] = {
    "tiny": _tiny,
    "tiny-sam2": _tiny_sam2,
    "smollm2-135m": _smollm2,
    "full": _full,
}


def model_preset(name: str) -> ModelConfig:
    """A fresh copy of preset ``name``."""
    factory = MODEL_PRESETS.get(name)
    if factory is None:
        raise ConfigError(f"unknown model preset {name!r}{did_you_mean(name, MODEL_PRESETS)}; options: {sorted(MODEL_PRESETS)}")
    return copy.deepcopy(factory())
