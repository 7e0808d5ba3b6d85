"""Typed configs of the pipeline baseline (``configs/pipeline_hoi_tiny.yaml`` is the CPU preset).

A pipeline experiment YAML has ``kind: pipeline`` at the top (that key, not the file's name, is
what ``psg4d train`` dispatches on) and the sections below; every field has a CPU-sized default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from psg4d.config import build_with_overrides, from_dict, load_yaml
from psg4d.data.readers import open_dataset
from psg4d.data.vocab import training_vocab
from psg4d.errors import ConfigError

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
    # torch threads for the whole run (a fixed count: resume is bit-identical whatever the load)
    num_threads: int = 2
    # >0: every so many steps train on the CPUs other processes leave free (at most num_threads; a
    # second thread only pays with a core of its own). Float sums then follow the load, so a resumed
    # run is no longer bit-identical to an uninterrupted one.
    adapt_threads_every: int = 0


# ------------------------------------------------------------------------ loading
STUFF_DEFAULT = ("floor", "wall", "sky", "road", "ground", "grass", "ceiling")


def load_pipeline_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    def build(data: dict[str, Any]) -> PipelineConfig:
        cfg = from_dict(PipelineConfig, data, where="", source=str(path))
        validate(cfg, where=str(path))
        return cfg

    return build_with_overrides(build, load_yaml(path), overrides, where=str(path))


def validate(cfg: PipelineConfig, *, where: str = "config") -> None:
    s, r, t = cfg.segmenter, cfg.relation, cfg.tracker
    checks = [
        ("segmenter.image_size", s.image_size >= 16 and s.image_size % 8 == 0, "a multiple of 8, at least 16"),
        ("segmenter.num_queries", s.num_queries >= 1, "positive"),
        ("segmenter.widths", len(s.widths) == 3 and min(s.widths) >= 1, "three positive widths"),
        ("segmenter.hidden", s.hidden >= s.heads and s.hidden % s.heads == 0, "a multiple of heads"),
        ("relation.hidden", r.hidden >= r.heads and r.hidden % r.heads == 0, "a multiple of heads"),
        ("relation.max_pairs", r.max_pairs >= 1, "positive"),
        ("tracker.max_missing", t.max_missing >= 0, "non-negative"),
        ("tracker.iou_weight", 0.0 <= t.iou_weight <= 1.0, "in [0, 1]"),
        ("num_threads", cfg.num_threads >= 1, "at least 1"),
        ("adapt_threads_every", cfg.adapt_threads_every >= 0, "non-negative"),
    ]
    for name, st in (("segment_train", cfg.segment_train), ("relation_train", cfg.relation_train)):
        checks += [(f"{name}.steps", st.steps >= 0, "non-negative"),
                   (f"{name}.batch_size", st.batch_size >= 1, "positive"),
                   (f"{name}.lr", math.isfinite(st.lr) and 0 < st.lr < 1, "in (0, 1)"),
                   (f"{name}.save_every", st.save_every >= 1, "positive")]
    for key, ok, rule in checks:
        if not ok:
            raise ConfigError(f"{where}: {key} must be {rule}")


def with_data_vocab(cfg: PipelineConfig) -> PipelineConfig:
    """The segmenter's classes and the relation model's predicates from what the training videos
    contain (:func:`psg4d.data.vocab.training_vocab`: a category only validation or test holds
    never enters the model); kept when the config names them."""
    reader = open_dataset(cfg.data.root / cfg.data.path)
    seg, rel = cfg.segmenter, cfg.relation
    vocab = None if seg.class_names and rel.predicate_names else training_vocab([(reader, train_ids(reader, cfg))])
    classes = list(seg.class_names) or vocab.objects
    stuff = list(seg.stuff_names) or [c for c in classes if c in STUFF_DEFAULT]
    preds = list(rel.predicate_names) or vocab.predicates
    if not classes or not preds:
        raise ConfigError(f"{cfg.data.root / cfg.data.path}: split {cfg.data.train_split!r} holds no object or "
                          "relation to learn")
    return replace(cfg, segmenter=replace(seg, class_names=classes, stuff_names=stuff),
                   relation=replace(rel, predicate_names=preds, num_classes=len(classes), feat_dim=seg.hidden))


def train_ids(reader, cfg: PipelineConfig) -> list[str]:
    ids = reader.video_ids(cfg.data.train_split)
    return ids if cfg.data.max_videos is None else ids[: cfg.data.max_videos]
