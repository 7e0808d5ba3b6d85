"""Typed configs of the pipeline baseline (``configs/pipeline_hoi_tiny.yaml`` is the CPU preset).

A pipeline experiment YAML has ``kind: pipeline`` at the top (that key, not the file's name, is
what ``psg4d train`` dispatches on) and the sections below; every field has a CPU-sized default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

PIPELINE_STAGES = ("segment", "track", "relation")  # run in this order; each cached on disk


@dataclass(kw_only=True)
class SegmenterConfig:
    """Mask2Former-style query segmenter on an RGB and a depth backbone (SA-Gate-style fusion)."""

    class_names: list[str] = field(default_factory=list)  # filled from the training data
    stuff_names: list[str] = field(default_factory=list)  # of class_names: amorphous regions (floor, wall)
    image_size: int = 64  # frames are resized to image_size x image_size
    widths: tuple[int, ...] = (32, 64, 96)  # backbone stage channels (strides 2, 4, 8)
    hidden: int = 64  # pixel-decoder and transformer width
    num_queries: int = 24
    decoder_layers: int = 3  # masked-attention layers, cycling over the three feature scales
    heads: int = 4
    ffn: int = 128
    use_depth: bool = True  # False: the RGB backbone alone (the "without depth" ablation)
    # losses (Mask2Former's: classification with a down-weighted "no object", mask BCE and Dice)
    no_object_weight: float = 0.1
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    # inference: a query keeps its segment when its class score and mask survive these
    score_threshold: float = 0.5
    mask_threshold: float = 0.5
    overlap_threshold: float = 0.8  # share of a query's mask left after higher-scored segments
    min_area: int = 4  # pixels at image_size


@dataclass(kw_only=True)
class TrackerConfig:
    """Online linking of per-frame segments into tubes."""

    iou_weight: float = 0.5  # cost = 1 - (iou_weight * mask IoU + (1 - iou_weight) * embedding cosine)
    match_threshold: float = 0.3  # a pair of track and segment is linked when its similarity reaches this
    birth_score: float = 0.5  # an unmatched segment starts a track when its score reaches this
    max_missing: int = 4  # frames a track may go unseen (occlusion) before it ends
    reentry_similarity: float = 0.8  # embedding cosine at which an ended track is resumed instead of a new one
    min_length: int = 2  # tubes seen in fewer frames are dropped
    class_aware: bool = True  # a segment never links to a track of another class


@dataclass(kw_only=True)
class RelationConfig:
    """Relation model over tubes."""

    predicate_names: list[str] = field(default_factory=list)  # filled from the training data
    num_classes: int = 0  # the segmenter's class count (its class probabilities are an input)
    feat_dim: int = 64  # the segmenter's query embedding width (= SegmenterConfig.hidden)
    hidden: int = 96
    heads: int = 4
    spatial_layers: int = 2  # across tubes within each frame
    temporal_layers: int = 2  # over each pair's frames
    use_temporal: bool = True  # False: a per-frame MLP instead (the "without temporal transformer" ablation)
    max_pairs: int = 48  # pairs the proposal head passes on (training: the gold pairs first)
    max_frames: int = 64  # learned temporal positions
    dropout: float = 0.1
    span_threshold: float = 0.5
    top_k: int = 100  # ranked triplets written per video
    # matching predicted tubes to gold objects for the training targets
    match_iou: float = 0.5
    min_matched_frames: float = 0.5  # share of the gold tube's frames (at least one frame)


@dataclass(kw_only=True)
class StageTrainConfig:
    steps: int = 1000
    batch_size: int = 8  # frames (segment) or videos (relation)
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    max_grad_norm: float = 1.0
    log_every: int = 25
    save_every: int = 250


@dataclass(kw_only=True)
class PipelineDataConfig:
    root: Path = Path("runs/synth_hoi_big")
    path: str = "4d"  # dataset folder under root
    train_split: str = "train"
    max_videos: int | None = None  # the first N videos of the training split (None: all)
    val_split: str = "val"
    val_videos: int = 16  # the finished pipeline is scored on the first N (0: not validated); OUT/val.json
    cache_splits: list[str] = field(default_factory=lambda: ["train", "val"])  # tubes the track stage writes


@dataclass(kw_only=True)
class PipelineConfig:
    kind: Literal["pipeline"] = "pipeline"
    data: PipelineDataConfig = field(default_factory=PipelineDataConfig)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    relation: RelationConfig = field(default_factory=RelationConfig)
    segment_train: StageTrainConfig = field(default_factory=StageTrainConfig)
    relation_train: StageTrainConfig = field(default_factory=lambda: StageTrainConfig(steps=1500, batch_size=4))
    output_dir: Path = Path("runs/pipeline_hoi_tiny")
    # an earlier pipeline run whose segment and track stages this one takes as they are (the
    # relation-model ablation trains only its relation stage on the same tubes)
    reuse: Path | None = None
    seed: int = 0
    # the most torch threads; each step takes the CPUs other processes leave free (a second thread
    # only pays with a core of its own)
    num_threads: int = 2
