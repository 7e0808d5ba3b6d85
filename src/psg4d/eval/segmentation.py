"""Segmentation quality of predicted mask tubes: tube vIoU / recall and per-frame panoptic quality.

The triplet recall (:mod:`psg4d.eval.metric`) only looks at the tubes of objects that take part in
relations; these metrics score every object's tube, to compare the segmentation of a pipeline
baseline with the 4D-LLM's.

* :class:`TubeQuality`: per video, predicted objects are matched one-to-one to GT objects by the
  Hungarian algorithm on tube vIoU (class-agnostic). Reports the mean matched vIoU over GT objects
  (an unmatched GT object counts 0), recall at vIoU >= 0.5, the same recall counting only matches
  whose majority categories agree, and the mean vIoU of things and of stuff (by the GT object's
  ``is_thing``). Fractions in [0, 1].
* :class:`PanopticQuality`: panoptic quality (Kirillov et al., CVPR 2019) computed frame by frame
  and pooled over all frames of all videos: a frame's segments are the objects' masks in that frame
  with their per-frame category; same-category segments with IoU > 0.5 match. Reports PQ, SQ, RQ
  (percent, averaged over the categories that occur), PQ of thing and of stuff categories and the
  per-category numbers.
* :class:`SegmentationQuality`: both, sharing one overlap computation per video.

Departures from COCO panoptic, which our data call for:

* There are no void or crowd GT pixels, so none of PQ's void handling applies.
* Predicted masks may overlap (one tube per object, not a pixel-exclusive map). Each segment's IoU
  is that of its own full mask, so a pixel claimed by several predicted segments counts for each.
  With overlaps two predictions can both pass IoU > 0.5 with one GT segment; the match is then made
  greedily by IoU, one-to-one (without overlaps the match is unique and this changes nothing).
* Every object is a segment, stuff included (COCO has one segment per stuff category per image).

Labels are compared after :func:`psg4d.eval.labelmap.normalize_label`, predicted ones through the
optional :class:`~psg4d.eval.labelmap.LabelMap`, as in the triplet recall.

GT objects without a tube, or whose tube has no pixel, are not scored; a GT video whose objects
all lack tubes is skipped (its predictions cannot be judged). Predicted objects without a tube are
ignored. ``pred=None`` (no prediction for a video) scores its GT objects as misses.

The state of each metric is a dict of plain Python numbers that adds across processes
(:meth:`merge`, or add :attr:`state` dicts by hand and :meth:`load_state`).
"""

from __future__ import annotations

import abc
import logging
from typing import Any, Callable, Mapping

import numpy as np
from scipy.optimize import linear_sum_assignment

from psg4d.data.masks import iou_from_counts
from psg4d.data.schema import ObjectTrack, SceneGraph4D
from psg4d.errors import DataError
from psg4d.eval.geometry import TubeOverlap, tube_overlaps
from psg4d.eval.labelmap import IDENTITY, LabelMap, normalize_label

log = logging.getLogger(__name__)

#: vIoU a matched tube needs to count for ``recall@0.5``; IoU a segment needs (strictly) to match in PQ
MATCH_THRESHOLD = 0.5

_TUBE_KEYS = (
    "sum_viou", "num_gt", "matched", "class_matched", "num_pred",
    "sum_viou_things", "num_gt_things", "sum_viou_stuff", "num_gt_stuff",
)  # fmt: skip
_PQ_KEYS = ("iou", "tp", "fp", "fn", "gt_thing", "gt_stuff", "pred_thing", "pred_stuff")


class VideoSegments:
    """One video's scored objects and the per-frame overlap of their tubes (computed once, shared)."""

    def __init__(self, pred: SceneGraph4D | None, gt: SceneGraph4D):
        self.video_id = gt.video_id
        self.pred_objects_with_tubes = 0 if pred is None else sum(o.tube is not None for o in pred.objects)
        #: the video's objects all lack tubes: nothing to score it against
        self.skipped = bool(gt.objects) and all(o.tube is None for o in gt.objects)
        self.pred: list[ObjectTrack] = []
        self.gt: list[ObjectTrack] = []
        self.num_frames = gt.num_frames
        if self.skipped:
            self.overlap = tube_overlaps([], [], gt.num_frames)
            return
        where = f"video {gt.video_id!r}"
        if pred is not None and pred.video_id != gt.video_id:
            raise DataError(where, f"the prediction is for video {pred.video_id!r}")
        ref = (gt.height, gt.width, gt.num_frames)
        for side, graph in (("predicted", pred), ("ground-truth", gt)):
            for o in [] if graph is None else graph.objects:
                t = o.tube
                if t is not None and (t.height, t.width, t.num_frames) != ref:
                    # two resolutions cannot be compared pixel for pixel; resampling would hide the mistake
                    raise DataError(
                        where,
                        f"{side} object {o.object_id}'s tube is {t.height}x{t.width} over {t.num_frames} frames, "
                        f"the ground truth is {gt.height}x{gt.width} over {gt.num_frames} frames",
                    )
        self.pred = [] if pred is None else [o for o in pred.objects if o.tube is not None]
        candidates = [o for o in gt.objects if o.tube is not None]
        overlap = tube_overlaps([o.tube for o in self.pred], [o.tube for o in candidates], gt.num_frames)
        keep = overlap.gt_area.sum(-1) > 0  # an all-empty GT tube is nothing to segment
        self.gt = [o for o, k in zip(candidates, keep) if k]
        self.overlap = TubeOverlap(
            iou=overlap.iou[:, keep], inter=overlap.inter[:, keep], pred_area=overlap.pred_area,
            gt_area=overlap.gt_area[keep], pred_present=overlap.pred_present,
        )

    def tube_viou(self) -> np.ndarray:
        """float ``[N_pred, N_gt]``: whole-tube vIoU (0 where both tubes are empty)."""
        ov = self.overlap
        inter = ov.inter.sum(-1).astype(np.float64)
        union = ov.pred_area.sum(-1)[:, None] + ov.gt_area.sum(-1)[None, :] - inter
        return iou_from_counts(inter, union)


def _frame_labels(o: ObjectTrack, num_frames: int, label: Callable[[str], str]) -> list[str]:
    """The object's label in each frame: ``frame_categories[t]`` where given, else ``category``."""
    fc = o.frame_categories or []
    return [label(fc[t] if t < len(fc) and fc[t] is not None else o.category) for t in range(num_frames)]


class _SumState(abc.ABC):
    """A metric whose state is a flat or nested dict of numbers that adds across workers."""

    state: dict[str, Any]

    def merge(self, other: _SumState | Mapping[str, Any]) -> _SumState:
        """Add another metric's (or a worker's :attr:`state`) sums into this one; returns self."""
        if isinstance(other, _SumState):
            if type(other) is not type(self):
                raise TypeError(f"cannot merge a {type(other).__name__} into a {type(self).__name__}")
            other = other.state
        _add_into(self.state, other)
        return self

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Replace the state (e.g. by the sum of every worker's :attr:`state`)."""
        self.reset()
        _add_into(self.state, state)

    @abc.abstractmethod
    def reset(self) -> None:
        """Empty the state (each metric knows its keys)."""


def _add_into(into: dict[str, Any], other: Mapping[str, Any]) -> None:
    for k, v in other.items():
        if isinstance(v, Mapping):
            _add_into(into.setdefault(k, {}), v)
        else:
            into[k] = into.get(k, 0) + v


def _ratio(num: float, den: float) -> float | None:
    return float(num) / den if den else None


class TubeQuality(_SumState):
    """Class-agnostic Hungarian matching of predicted to GT tubes by vIoU (see the module doc).

    ``compute()`` keys: ``mean_tube_viou``, ``recall@0.5``, ``class_recall@0.5``, ``num_gt_objects``,
    ``num_pred_objects`` (predicted objects with a tube), ``mean_tube_viou_things``,
    ``mean_tube_viou_stuff``; a ratio is None when it has no GT object to average over.
    """

    def __init__(self, *, label_map: LabelMap | None = None):
        self.label_map = label_map or IDENTITY
        self.reset()

    def reset(self) -> None:
        self.state: dict[str, Any] = dict.fromkeys(_TUBE_KEYS, 0)

    def update(self, pred: SceneGraph4D | None, gt: SceneGraph4D, *, segments: VideoSegments | None = None) -> None:
        """Score one video (``segments``: its precomputed :class:`VideoSegments`, to share the work)."""
        v = segments if segments is not None else VideoSegments(pred, gt)
        s = self.state
        s["num_pred"] += v.pred_objects_with_tubes
        if v.skipped or not v.gt:
            return
        best = np.zeros(len(v.gt))  # vIoU of each GT object's match, 0 if none
        class_ok = np.zeros(len(v.gt), dtype=bool)
        if v.pred:
            viou = v.tube_viou()
            rows, cols = linear_sum_assignment(-viou)
            best[cols] = viou[rows, cols]
            for r, c in zip(rows, cols):
                class_ok[c] = self.label_map.object(v.pred[r].majority_category()) == normalize_label(
                    v.gt[c].majority_category()
                )
        hit = best >= MATCH_THRESHOLD
        things = np.array([o.is_thing for o in v.gt], dtype=bool)
        s["sum_viou"] += float(best.sum())
        s["num_gt"] += len(v.gt)
        s["matched"] += int(hit.sum())
        s["class_matched"] += int((hit & class_ok).sum())
        s["sum_viou_things"] += float(best[things].sum())
        s["num_gt_things"] += int(things.sum())
        s["sum_viou_stuff"] += float(best[~things].sum())
        s["num_gt_stuff"] += int((~things).sum())

    def compute(self) -> dict[str, Any]:
        s = self.state
        n = s["num_gt"]
        return {
            "mean_tube_viou": _ratio(s["sum_viou"], n),
            "recall@0.5": _ratio(s["matched"], n),
            "class_recall@0.5": _ratio(s["class_matched"], n),
            "num_gt_objects": int(n),
            "num_pred_objects": int(s["num_pred"]),
            "mean_tube_viou_things": _ratio(s["sum_viou_things"], s["num_gt_things"]),
            "mean_tube_viou_stuff": _ratio(s["sum_viou_stuff"], s["num_gt_stuff"]),
        }


class PanopticQuality(_SumState):
    """Per-frame panoptic quality pooled over all frames of all videos (see the module doc).

    State: ``{category: {"iou", "tp", "fp", "fn", "gt_thing", "gt_stuff", "pred_thing", "pred_stuff"}}``,
    the last four counting segments, to call a category thing or stuff: by its GT segments' majority,
    or its predicted ones' for a category only predicted.

    ``compute()`` keys: ``PQ``, ``SQ``, ``RQ`` (percent, means over the categories with a TP, FP or FN),
    ``PQ_things``, ``PQ_stuff``, ``num_categories`` and ``per_category`` ``{category: {"PQ", "SQ", "RQ",
    "tp", "fp", "fn", "is_thing"}}``; means are None over no category.
    """

    def __init__(self, *, label_map: LabelMap | None = None):
        self.label_map = label_map or IDENTITY
        self.reset()

    def reset(self) -> None:
        self.state: dict[str, Any] = {}

    def update(self, pred: SceneGraph4D | None, gt: SceneGraph4D, *, segments: VideoSegments | None = None) -> None:
        """Score every frame of one video (``segments``: its precomputed :class:`VideoSegments`)."""
        v = segments if segments is not None else VideoSegments(pred, gt)
        if v.skipped:
            return
        T, ov = v.num_frames, v.overlap
        cats: dict[str, int] = {}

        def codes(objects: list[ObjectTrack], label: Callable[[str], str]) -> np.ndarray:  # int64 [N, T]
            out = np.zeros((len(objects), T), dtype=np.int64)
            for i, o in enumerate(objects):
                out[i] = [cats.setdefault(c, len(cats)) for c in _frame_labels(o, T, label)]
            return out

        p_code, g_code = codes(v.pred, self.label_map.object), codes(v.gt, normalize_label)
        p_seg, g_seg = ov.pred_area > 0, ov.gt_area > 0  # [N, T]: a segment in that frame
        # iou > 0 implies both segments exist in that frame
        cand = (ov.iou > MATCH_THRESHOLD) & (p_code[:, None, :] == g_code[None, :, :])
        p_tp = np.zeros_like(p_seg)
        g_tp = np.zeros_like(g_seg)
        tp_iou = np.zeros(len(cats))
        for t in np.flatnonzero(cand.any(axis=(0, 1))):
            pi, gi = np.nonzero(cand[:, :, t])
            if len(set(pi)) < len(pi) or len(set(gi)) < len(gi):
                # only overlapping segments get here: keep the pairs one-to-one, best IoU first
                order = np.argsort(-ov.iou[pi, gi, t], kind="stable")
                used_p: set[int] = set()
                used_g: set[int] = set()
                keep = []
                for k in order:
                    if pi[k] not in used_p and gi[k] not in used_g:
                        used_p.add(pi[k])
                        used_g.add(gi[k])
                        keep.append(k)
                pi, gi = pi[keep], gi[keep]
            p_tp[pi, t] = True
            g_tp[gi, t] = True
            np.add.at(tp_iou, g_code[gi, t], ov.iou[pi, gi, t])
        n = len(cats)

        def count(code: np.ndarray, mask: np.ndarray) -> np.ndarray:
            return np.bincount(code[mask], minlength=n)

        p_thing = np.array([o.is_thing for o in v.pred], dtype=bool)[:, None] & p_seg
        g_thing = np.array([o.is_thing for o in v.gt], dtype=bool)[:, None] & g_seg
        sums = {
            "iou": tp_iou,
            "tp": count(g_code, g_tp),
            "fp": count(p_code, p_seg & ~p_tp),
            "fn": count(g_code, g_seg & ~g_tp),
            "gt_thing": count(g_code, g_thing),
            "gt_stuff": count(g_code, g_seg & ~g_thing),
            "pred_thing": count(p_code, p_thing),
            "pred_stuff": count(p_code, p_seg & ~p_thing),
        }
        for name, c in cats.items():
            row = {k: (float(a[c]) if k == "iou" else int(a[c])) for k, a in sums.items()}
            if row["gt_thing"] + row["gt_stuff"] + row["pred_thing"] + row["pred_stuff"]:
                _add_into(self.state.setdefault(name, dict.fromkeys(_PQ_KEYS, 0)), row)

    def compute(self) -> dict[str, Any]:
        per: dict[str, dict[str, Any]] = {}
        for name in sorted(self.state):
            s = self.state[name]
            tp, fp, fn = int(s["tp"]), int(s["fp"]), int(s["fn"])
            if tp + fp + fn == 0:
                continue
            sq = s["iou"] / tp if tp else 0.0
            rq = tp / (tp + 0.5 * fp + 0.5 * fn)
            gt_n = s["gt_thing"] + s["gt_stuff"]
            is_thing = s["gt_thing"] >= s["gt_stuff"] if gt_n else s["pred_thing"] >= s["pred_stuff"]
            per[name] = {"PQ": 100.0 * sq * rq, "SQ": 100.0 * sq, "RQ": 100.0 * rq, "tp": tp, "fp": fp, "fn": fn,
                         "is_thing": bool(is_thing)}

        def mean(key: str, thing: bool | None = None) -> float | None:
            vals = [c[key] for c in per.values() if thing is None or c["is_thing"] == thing]
            return float(np.mean(vals)) if vals else None

        return {
            "PQ": mean("PQ"), "SQ": mean("SQ"), "RQ": mean("RQ"),
            "PQ_things": mean("PQ", True), "PQ_stuff": mean("PQ", False),
            "num_categories": len(per), "per_category": per,
        }  # fmt: skip


class SegmentationQuality:
    """:class:`TubeQuality` and :class:`PanopticQuality` updated together (one overlap per video)."""

    def __init__(self, *, label_map: LabelMap | None = None):
        self.tube = TubeQuality(label_map=label_map)
        self.panoptic = PanopticQuality(label_map=label_map)

    def update(self, pred: SceneGraph4D | None, gt: SceneGraph4D) -> None:
        segments = VideoSegments(pred, gt)
        self.tube.update(pred, gt, segments=segments)
        self.panoptic.update(pred, gt, segments=segments)

    def reset(self) -> None:
        self.tube.reset()
        self.panoptic.reset()

    def merge(self, other: SegmentationQuality) -> SegmentationQuality:
        self.tube.merge(other.tube)
        self.panoptic.merge(other.panoptic)
        return self

    @property
    def scored(self) -> bool:
        """Both sides had tubes: some GT object was scored and some predicted object had a tube."""
        return self.tube.state["num_gt"] > 0 and self.tube.state["num_pred"] > 0

    def compute(self) -> dict[str, Any]:
        """``{"tube": TubeQuality.compute(), "panoptic": PanopticQuality.compute()}``."""
        return {"tube": self.tube.compute(), "panoptic": self.panoptic.compute()}
