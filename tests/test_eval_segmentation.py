"""Segmentation quality (tube vIoU / recall, per-frame PQ) against hand-computed cases, and in ``psg4d eval``."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from test_eval_support import CATS, graph, noisy_prediction, random_gt, rows_tube
from typer.testing import CliRunner

from psg4d.cli import app
from psg4d.data.masks import dense_tube_viou
from psg4d.data.schema import MaskTube, ObjectTrack, SceneGraph4D, save_scene_graphs
from psg4d.errors import DataError
from psg4d.eval.segmentation import PanopticQuality, SegmentationQuality, TubeQuality

T = 2  # frames of the hand-made 4x4 videos


def obj(oid: int, cat: str, frames: dict[int, tuple[int, int, int, int]], *, thing: bool = True,
        fc: list[str | None] | None = None, n_frames: int = T) -> ObjectTrack:
    """An object whose mask is the box ``[r0, r1) x [c0, c1)`` in each listed frame."""
    return ObjectTrack(oid, cat, is_thing=thing, tube=rows_tube(n_frames, frames), frame_categories=fc)


def video(vid: str, objects: list[ObjectTrack], n_frames: int = T) -> SceneGraph4D:
    return graph(vid, n_frames, objects, [])


def tube(pred: SceneGraph4D | None, gt: SceneGraph4D) -> dict:
    m = TubeQuality()
    m.update(pred, gt)
    return m.compute()


def panoptic(pred: SceneGraph4D | None, gt: SceneGraph4D) -> dict:
    m = PanopticQuality()
    m.update(pred, gt)
    return m.compute()


PERSON = {0: (0, 2, 0, 4), 1: (0, 2, 0, 4)}  # rows 0-1 of both frames: 8 px a frame
FLOOR = {0: (2, 4, 0, 4), 1: (2, 4, 0, 4)}


def scene() -> SceneGraph4D:
    return video("v", [obj(1, "person", PERSON), obj(2, "floor", FLOOR, thing=False)])


# ------------------------------------------------------------------ tube quality


def test_perfect_prediction_scores_one_and_pq_100():
    gt = scene()
    t = tube(copy.deepcopy(gt), gt)
    assert t == {"mean_tube_viou": 1.0, "recall@0.5": 1.0, "class_recall@0.5": 1.0, "num_gt_objects": 2,
                 "num_pred_objects": 2, "mean_tube_viou_things": 1.0, "mean_tube_viou_stuff": 1.0}
    p = panoptic(copy.deepcopy(gt), gt)
    assert (p["PQ"], p["SQ"], p["RQ"], p["PQ_things"], p["PQ_stuff"]) == (100.0, 100.0, 100.0, 100.0, 100.0)
    assert p["per_category"]["person"] == {"PQ": 100.0, "SQ": 100.0, "RQ": 100.0, "tp": 2, "fp": 0, "fn": 0,
                                           "is_thing": True}
    assert p["per_category"]["floor"]["is_thing"] is False


def test_half_overlapping_tube_viou_by_hand():
    gt = video("v", [obj(1, "person", PERSON)])
    # frame 0: 4 px inside the GT's 8; frame 1: rows 1-2, 4 of its 8 px on the GT
    pred = video("v", [obj(7, "person", {0: (0, 2, 0, 2), 1: (1, 3, 0, 4)})])
    # intersection 4 + 4 = 8; union |GT| 16 + |pred| 12 - 8 = 20
    t = tube(pred, gt)
    assert t["mean_tube_viou"] == pytest.approx(8 / 20)
    assert t["recall@0.5"] == 0.0 and t["class_recall@0.5"] == 0.0


def test_hungarian_beats_greedy():
    a = obj(1, "person", {0: (0, 2, 0, 4)})  # frame 0 only, 8 px
    b = obj(2, "person", {1: (0, 2, 0, 4)})  # frame 1 only, 8 px
    p = obj(10, "person", {0: (0, 2, 0, 4), 1: (0, 1, 0, 4)})  # A exactly + half of B: 12 px
    q = obj(11, "person", {0: (0, 1, 0, 4)})  # half of A: 4 px
    # vIoU: p-A 8/12, p-B 4/16, q-A 4/8, q-B 0. Greedy takes p-A (2/3) and leaves q-B (0): 2/3 in all;
    # the best one-to-one assignment is p-B + q-A = 1/4 + 1/2 = 3/4
    t = tube(video("v", [p, q]), video("v", [a, b]))
    assert t["mean_tube_viou"] == pytest.approx(0.75 / 2)
    assert t["recall@0.5"] == 0.5  # q-A reaches 0.5 exactly (>=)


def test_unmatched_gt_counts_zero_and_missing_prediction():
    gt = scene()
    pred = video("v", [obj(5, "person", PERSON)])
    t = tube(pred, gt)
    assert t["mean_tube_viou"] == 0.5 and t["recall@0.5"] == 0.5 and t["num_gt_objects"] == 2
    assert (t["mean_tube_viou_things"], t["mean_tube_viou_stuff"]) == (1.0, 0.0)
    none = tube(None, gt)
    assert none["mean_tube_viou"] == 0.0 and none["recall@0.5"] == 0.0 and none["num_pred_objects"] == 0
    p = panoptic(None, gt)
    assert p["PQ"] == 0.0 and p["per_category"]["person"]["fn"] == 2 and p["per_category"]["floor"]["fn"] == 2


def test_predicted_objects_without_tube_are_ignored():
    gt = scene()
    pred = copy.deepcopy(gt)
    pred.objects.append(ObjectTrack(9, "person", tube=None))
    assert tube(pred, gt)["num_pred_objects"] == 2
    assert tube(pred, gt)["mean_tube_viou"] == 1.0


def test_class_correct_vs_class_agnostic_recall():
    gt = scene()
    pred = copy.deepcopy(gt)
    pred.objects[0].category = "dog"  # right mask, wrong class
    pred.objects[1].category = " Floor "  # compared after normalisation
    t = tube(pred, gt)
    assert t["recall@0.5"] == 1.0 and t["class_recall@0.5"] == 0.5 and t["mean_tube_viou"] == 1.0
    # the class is the majority of the per-frame labels
    pred.objects[0].frame_categories = ["person", "person"]
    assert tube(pred, gt)["class_recall@0.5"] == 1.0
    # a label map maps free text onto the vocabulary
    from psg4d.eval.labelmap import LabelMap

    pred.objects[0].frame_categories = None
    m = TubeQuality(label_map=LabelMap(objects={"dog": "person"}))
    m.update(pred, gt)
    assert m.compute()["class_recall@0.5"] == 1.0


def test_things_and_stuff_split():
    gt = scene()
    # person exact; floor prediction: frame 0 exact (8 px), frame 1 rows 3 only (4 of 8): vIoU 12/16
    pred = video("v", [obj(1, "person", PERSON), obj(2, "floor", {0: (2, 4, 0, 4), 1: (3, 4, 0, 4)}, thing=False)])
    t = tube(pred, gt)
    assert t["mean_tube_viou_things"] == 1.0
    assert t["mean_tube_viou_stuff"] == pytest.approx(12 / 16)
    assert t["mean_tube_viou"] == pytest.approx((1 + 12 / 16) / 2)


def test_empty_metrics_are_none_not_nan():
    t = TubeQuality().compute()
    assert t["mean_tube_viou"] is None and t["recall@0.5"] is None and t["num_gt_objects"] == 0
    assert t["mean_tube_viou_things"] is None and t["mean_tube_viou_stuff"] is None
    p = PanopticQuality().compute()
    assert p["PQ"] is None and p["PQ_things"] is None and p["per_category"] == {}
    # GT without tubes: the video is skipped, not an error
    gt = video("v", [ObjectTrack(1, "person")])
    assert tube(scene(), gt)["num_gt_objects"] == 0 and panoptic(scene(), gt)["PQ"] is None


def test_mismatched_resolution_or_frames_is_a_data_error():
    gt = scene()
    big = graph("v", T, [ObjectTrack(1, "person", tube=MaskTube.from_dense(np.ones((T, 8, 8), bool)))], [])
    with pytest.raises(DataError, match=r"video 'v'.*8x8"):
        tube(big, gt)
    long = video("v", [obj(1, "person", {0: (0, 2, 0, 4)}, n_frames=3)])
    with pytest.raises(DataError, match=r"video 'v'.*3 frames"):
        SegmentationQuality().update(long, gt)


# ------------------------------------------------------------------ panoptic quality


def test_pq_one_tp_one_fp_one_fn_by_hand():
    gt = video("v", [obj(1, "person", {0: (0, 2, 0, 4)}), obj(2, "person", {0: (3, 4, 0, 2)})])
    pred = video("v", [obj(1, "person", {0: (0, 2, 0, 3)}),  # 6 of GT 1's 8 px: IoU 0.75, a TP
                       obj(2, "person", {0: (2, 3, 0, 4)})])  # on no GT: a FP; GT 2 is a FN
    p = panoptic(pred, gt)
    # SQ = 0.75, RQ = 1 / (1 + 0.5 + 0.5), PQ = SQ * RQ
    assert p["per_category"]["person"] == {"PQ": 37.5, "SQ": 75.0, "RQ": 50.0, "tp": 1, "fp": 1, "fn": 1,
                                           "is_thing": True}
    assert (p["PQ"], p["SQ"], p["RQ"], p["PQ_things"], p["PQ_stuff"]) == (37.5, 75.0, 50.0, 37.5, None)
    # a perfect stuff category in frame 1 joins the category mean and the stuff mean
    gt.objects.append(obj(3, "floor", {1: FLOOR[1]}, thing=False))
    pred.objects.append(obj(3, "floor", {1: FLOOR[1]}, thing=False))
    p = panoptic(pred, gt)
    assert p["PQ"] == pytest.approx((37.5 + 100) / 2) and p["PQ_things"] == 37.5 and p["PQ_stuff"] == 100.0
    assert p["num_categories"] == 2


def test_pq_needs_same_category_iou_above_half_and_uses_frame_categories():
    gt = video("v", [obj(1, "person", PERSON)])
    pred = video("v", [obj(1, "dog", PERSON, fc=["person", None])])  # frame 1 falls back to "dog"
    p = panoptic(pred, gt)["per_category"]
    assert p["person"]["tp"] == 1 and p["person"]["fn"] == 1 and p["dog"]["fp"] == 1
    # IoU exactly 0.5 (4 px inside 8) is not a match: PQ's threshold is strict
    half = video("v", [obj(1, "person", {0: (0, 1, 0, 4)})])
    p = panoptic(half, video("v", [obj(1, "person", {0: (0, 2, 0, 4)})]))["per_category"]["person"]
    assert (p["tp"], p["fp"], p["fn"]) == (0, 1, 1)


def test_pq_overlapping_predictions_match_one_to_one():
    gt = video("v", [obj(1, "person", {0: (0, 2, 0, 4)})])
    pred = video("v", [obj(1, "person", {0: (0, 2, 0, 3)}), obj(2, "person", {0: (0, 2, 0, 4)})])  # IoU .75, 1
    p = panoptic(pred, gt)["per_category"]["person"]
    assert (p["tp"], p["fp"], p["fn"]) == (1, 1, 0)
    assert p["SQ"] == 100.0 and p["RQ"] == pytest.approx(100 / 1.5)  # the best IoU is the one matched


def test_agrees_with_a_dense_pixel_reference():
    """Random noisy predictions (overlapping masks, per-frame labels) against a brute-force pixel version."""
    rng = np.random.default_rng(11)
    seg = SegmentationQuality()
    viou_sum, n_gt, counts = 0.0, 0, {}
    for i in range(4):
        g = random_gt(rng, f"v{i}", n_obj=6)
        p = noisy_prediction(rng, g)
        seg.update(p, g)
        P, G = [o.tube.to_dense() for o in p.objects], [o.tube.to_dense() for o in g.objects]
        v = np.array([[dense_tube_viou(a, b) for b in G] for a in P])
        r, c = linear_sum_assignment(-v)
        viou_sum, n_gt = viou_sum + v[r, c].sum(), n_gt + len(G)
        for t in range(g.num_frames):
            pc = [(o.frame_categories or [o.category] * g.num_frames)[t] for o in p.objects]
            ious = sorted(((P[a][t] & G[b][t]).sum() / (P[a][t] | G[b][t]).sum(), a, b)
                          for a in range(len(P)) for b in range(len(G))
                          if pc[a] == g.objects[b].category and P[a][t].any() and G[b][t].any())
            used_p, used_g = set(), set()
            for iou, a, b in reversed(ious):
                if iou > 0.5 and a not in used_p and b not in used_g:
                    used_p.add(a), used_g.add(b)
                    counts.setdefault(g.objects[b].category, [0, 0, 0])[0] += 1
            for a in set(range(len(P))) - used_p:
                counts.setdefault(pc[a], [0, 0, 0])[1] += P[a][t].any()
            for b in set(range(len(G))) - used_g:
                counts.setdefault(g.objects[b].category, [0, 0, 0])[2] += G[b][t].any()
    out = seg.compute()
    assert out["tube"]["mean_tube_viou"] == pytest.approx(viou_sum / n_gt)
    per = out["panoptic"]["per_category"]
    assert {c: [per[c]["tp"], per[c]["fp"], per[c]["fn"]] for c in per} == {
        c: v for c, v in counts.items() if sum(v)
    }


# ------------------------------------------------------------------ merge


def test_merge_equals_one_metric_on_both_videos():
    rng = np.random.default_rng(0)
    gts = [random_gt(rng, f"v{i}", n_obj=5) for i in range(2)]
    for g in gts:
        g.objects[0].is_thing = False
    preds = [noisy_prediction(rng, g) for g in gts]
    preds[1].objects.pop()  # an unmatched GT object too
    both, first, second = SegmentationQuality(), SegmentationQuality(), SegmentationQuality()
    for p, g in zip(preds, gts):
        both.update(p, g)
    first.update(preds[0], gts[0])
    second.update(preds[1], gts[1])
    states = [copy.deepcopy((m.tube.state, m.panoptic.state)) for m in (first, second)]
    merged = first.merge(second).compute()
    expected = both.compute()
    assert merged["tube"] == pytest.approx(expected["tube"])
    assert merged["panoptic"]["per_category"].keys() == expected["panoptic"]["per_category"].keys()
    for key in ("PQ", "SQ", "RQ", "PQ_things", "PQ_stuff"):
        assert merged["panoptic"][key] == pytest.approx(expected["panoptic"][key])
    assert 0 < expected["tube"]["mean_tube_viou"] < 1 and expected["panoptic"]["PQ"] > 0
    # workers' plain state dicts add the same way
    third = SegmentationQuality()
    third.tube.load_state(states[0][0])
    third.tube.merge(states[1][0])
    third.panoptic.merge(states[0][1]).merge(states[1][1])
    assert third.compute() == merged
    with pytest.raises(TypeError):
        TubeQuality().merge(PanopticQuality())


# ------------------------------------------------------------------ psg4d eval


def test_psg4d_eval_reports_segmentation(tmp_path):
    rng = np.random.default_rng(4)
    gts = [random_gt(rng, f"vid{i}") for i in range(3)]
    save_scene_graphs(tmp_path / "gt.jsonl", gts)
    save_scene_graphs(tmp_path / "pred.jsonl", [copy.deepcopy(g) for g in gts[:2]])  # vid2 missing
    out = tmp_path / "m.json"
    res = CliRunner().invoke(app, ["eval", "--pred", str(tmp_path / "pred.jsonl"), "--gt", str(tmp_path / "gt.jsonl"),
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "mean tube vIoU 0.67 (recall@0.5 0.67" in res.output and "PQ " in res.output
    seg = json.loads(out.read_text())["segmentation"]
    assert seg["tube"]["num_gt_objects"] == 12 and seg["tube"]["mean_tube_viou"] == pytest.approx(8 / 12)
    assert set(seg["panoptic"]["per_category"]) <= set(CATS) and seg["panoptic"]["SQ"] == 100.0

    # ground truth without tubes: no segmentation entry, no error
    bare = [copy.deepcopy(g) for g in gts]
    for g in bare:
        for o in g.objects:
            o.tube = None
        g.relations = []
    save_scene_graphs(tmp_path / "bare.jsonl", bare)
    res = CliRunner().invoke(app, ["eval", "--pred", str(tmp_path / "pred.jsonl"), "--gt", str(tmp_path / "bare.jsonl"),
                                   "--out", str(tmp_path / "b.json")])
    assert res.exit_code == 0, res.output
    assert "segmentation" not in json.loads((tmp_path / "b.json").read_text())
    assert "mean tube vIoU" not in res.output
