"""Evaluation of 4D scene graphs: triplet R@K / mR@K under the published ``pvsg`` protocol
(OpenPVSG's, used by PSG4D) and the strict ``volumetric`` protocol, with weak, pair and
zero-shot recalls, with and without the graph constraint (keys: :mod:`psg4d.eval.metric`); and the
segmentation quality of the tubes (mean tube vIoU, per-frame panoptic quality: :mod:`psg4d.eval.segmentation`)."""

from psg4d.eval.geometry import (
    TubeOverlap,
    frame_ious,
    overlap_tube_viou,
    pair_viou,
    span_iou,
    span_mask,
    tube_overlaps,
)
from psg4d.eval.automap import AutoLabelMapper, LabelMapping, auto_label_map
from psg4d.eval.labelmap import LabelMap, normalize_label
from psg4d.eval.metric import CONSTRAINTS, PROTOCOLS, RecallState, SceneGraphRecall, evaluate
from psg4d.eval.pvsg import pvsg_hit_ranks, pvsg_view_ranks, pvsg_viou
from psg4d.eval.report import summary_table
from psg4d.eval.segmentation import PanopticQuality, SegmentationQuality, TubeQuality
from psg4d.eval.subsets import ZERO_SHOT_MODES, ZeroShot, load_zero_shot
from psg4d.eval.video import KINDS, NO_HIT, PreparedVideo, candidate_list, candidate_views, prepare_video
from psg4d.eval.volumetric import volumetric_hit_ranks, volumetric_scores, volumetric_view_ranks

__all__ = [
    "PanopticQuality",
    "SegmentationQuality",
    "TubeQuality",
    "CONSTRAINTS",
    "KINDS",
    "NO_HIT",
    "PROTOCOLS",
    "AutoLabelMapper",
    "LabelMap",
    "LabelMapping",
    "PreparedVideo",
    "RecallState",
    "SceneGraphRecall",
    "TubeOverlap",
    "ZERO_SHOT_MODES",
    "ZeroShot",
    "auto_label_map",
    "candidate_list",
    "candidate_views",
    "evaluate",
    "frame_ious",
    "load_zero_shot",
    "normalize_label",
    "overlap_tube_viou",
    "pair_viou",
    "prepare_video",
    "pvsg_hit_ranks",
    "pvsg_view_ranks",
    "pvsg_viou",
    "span_iou",
    "span_mask",
    "summary_table",
    "tube_overlaps",
    "volumetric_hit_ranks",
    "volumetric_scores",
    "volumetric_view_ranks",
]
