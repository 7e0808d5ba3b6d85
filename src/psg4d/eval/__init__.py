"""Evaluation of 4D scene graphs: triplet R@K / mR@K under the published ``pvsg`` protocol
(OpenPVSG's, used by PSG4D) and the strict ``volumetric`` protocol."""

from psg4d.eval.geometry import (
    TubeOverlap,
    frame_ious,
    overlap_tube_viou,
    pair_viou,
    span_iou,
    span_mask,
    tube_overlaps,
)
from psg4d.eval.labelmap import LabelMap, normalize_label
from psg4d.eval.metric import PROTOCOLS, RecallState, SceneGraphRecall, evaluate, summary_table
from psg4d.eval.pvsg import pvsg_hit_ranks, pvsg_viou
from psg4d.eval.video import NO_HIT, PreparedVideo, candidate_list, prepare_video
from psg4d.eval.volumetric import volumetric_hit_ranks, volumetric_scores

__all__ = [
    "NO_HIT",
    "PROTOCOLS",
    "LabelMap",
    "PreparedVideo",
    "RecallState",
    "SceneGraphRecall",
    "TubeOverlap",
    "candidate_list",
    "evaluate",
    "frame_ious",
    "normalize_label",
    "overlap_tube_viou",
    "pair_viou",
    "prepare_video",
    "pvsg_hit_ranks",
    "pvsg_viou",
    "span_iou",
    "span_mask",
    "summary_table",
    "tube_overlaps",
    "volumetric_hit_ranks",
    "volumetric_scores",
]
