"""Hand-computed cases for the ``pvsg`` protocol's rules and leniencies, and the strict
``volumetric`` protocol's differences on the same inputs.

All videos are 4x4 pixels, 6 frames. ``PERSON`` fills rows 0-1 (8 px), ``CUP`` rows 2-3 (8 px).
"""

from __future__ import annotations

import math

import pytest
from test_eval_support import box_tube, graph, rows_tube

from psg4d.data.schema import ObjectTrack, Relation
from psg4d.errors import ConfigError, DataError
from psg4d.eval import LabelMap, SceneGraphRecall, evaluate, pair_viou, span_iou, span_mask
from psg4d.eval.geometry import frame_ious

T = 6
PERSON = (0, 2, 0, 4)
CUP = (2, 4, 0, 4)


def gt_graph(relations, *, vid="v", cup_frames=None, **kw):
    objs = [
        ObjectTrack(0, "person", tube=box_tube(T, PERSON)),
        ObjectTrack(1, "cup", tube=box_tube(T, CUP, frames=cup_frames)),
    ]
    return graph(vid, T, objs, relations, **kw)


def pred_graph(relations, *, vid="v", person=None, cup=None, cup_cats=None, cup_label="cup"):
    objs = [
        ObjectTrack(10, "person", tube=person or box_tube(T, PERSON)),
        ObjectTrack(11, cup_label, tube=cup or box_tube(T, CUP), frame_categories=cup_cats),
    ]
    return graph(vid, T, objs, relations)


def score(pred, gt, protocol, ks=(1, 2, 3), **kw):
    return evaluate([pred], [gt], protocol=protocol, ks=ks, **kw)


# ------------------------------------------------------------------ geometry


def test_frame_ious_and_span_iou_by_hand():
    a = box_tube(T, PERSON)  # 8 px every frame
    b = rows_tube(T, {0: (0, 1, 0, 4), 1: (1, 3, 0, 4), 2: (2, 4, 0, 4)})  # 4 px, 8 px, 8 px; absent after
    # frame 0: inter 4 / union 8; frame 1: inter 4 / union 12; frame 2: disjoint; frames 3-5: absent
    assert frame_ious(b, a) == pytest.approx([0.5, 1 / 3, 0, 0, 0, 0])
    # [0, 2] vs [2, 5]: one shared frame out of six
    assert float(span_iou(span_mask([(0, 2)], T), span_mask([(2, 5)], T))) == pytest.approx(1 / 6)
    assert float(span_iou(span_mask([], T), span_mask([], T))) == 0.0


def test_long_tubes_past_pycocotools_area_limit():
    # pycocotools' area() overflows on more than 255 masks in one call under numpy 2
    long_t = 300
    a = box_tube(long_t, PERSON)
    b = box_tube(long_t, (0, 1, 0, 4))
    assert frame_ious(b, a) == pytest.approx([0.5] * long_t)
    assert pair_viou(b, a, [(0, long_t - 1)], [(0, 99)]) == pytest.approx(400 / (800 + 1200 - 400))


def test_tube_viou_by_hand():
    gt = box_tube(T, PERSON, frames=range(4))  # 8 px, frames 0-3
    pred = box_tube(T, (0, 1, 0, 4))  # 4 px inside the GT, frames 0-5
    # intersection 4 px x 4 frames = 16; GT volume over [0,3] = 32; predicted volume over [0,5] = 24
    # union = 32 + 24 - 16 = 40 -> 0.4
    assert pair_viou(pred, gt, [(0, 5)], [(0, 3)]) == pytest.approx(0.4)
    # the predicted span cut to [0, 3]: union 32 + 16 - 16 -> 0.5
    assert pair_viou(pred, gt, [(0, 3)], [(0, 3)]) == pytest.approx(0.5)


# ------------------------------------------------------------------ pvsg leniencies vs volumetric


def test_longer_predicted_span_hits_pvsg_but_not_volumetric():
    gt = gt_graph([Relation(0, 1, "holding", [(1, 2)])])
    pred = pred_graph([Relation(10, 11, "holding", [(0, 5)], score=0.9)])
    # pvsg: G = {1, 2}; H = {1, 2} (IoU 1); P = all frames -> |H∩P| / |G| = 1 -> hit at rank 0
    assert score(pred, gt, "pvsg")["R@1"] == 100.0
    # volumetric: subject vIoU = 16 / (16 + 48 - 16) = 1/3 and span IoU = 2/6, both < 0.5 -> miss
    assert score(pred, gt, "volumetric")["R@3"] == 0.0


def test_rank_counts_candidates_that_are_never_tested():
    gt = gt_graph([Relation(0, 1, "holding", [(0, 5)])])
    # listed out of rank order: by score the right triplet comes third, after two untested ones
    pred = pred_graph(
        [
            Relation(10, 11, "holding", [(0, 5)], score=0.1),
            Relation(10, 11, "touching", [(0, 5)], score=0.9),
            Relation(11, 10, "holding", [(0, 5)], score=0.5),  # swapped roles: labels differ, never tested
        ]
    )
    for protocol in ("pvsg", "volumetric"):
        r = score(pred, gt, protocol)
        assert (r["R@1"], r["R@2"], r["R@3"]) == (0.0, 0.0, 100.0), protocol


def test_one_candidate_hits_two_gt_relations_in_pvsg_only():
    gt = gt_graph([Relation(0, 1, "holding", [(0, 2)]), Relation(0, 1, "holding", [(3, 5)])])
    pred = pred_graph([Relation(10, 11, "holding", [(0, 5)], score=1.0)])
    # pvsg: each GT relation has viou 3/3 = 1 against the one candidate -> 2 of 2
    assert score(pred, gt, "pvsg")["R@1"] == 100.0
    # volumetric: against each GT, subject vIoU = 24 / (24 + 48 - 24) = 0.5 and span IoU = 3/6 = 0.5, so
    # the candidate matches both, but one-to-one matching gives it to one of them -> 1 of 2
    r = score(pred, gt, "volumetric")
    assert r["R@1"] == 50.0
    assert r["per_predicate"]["holding"] == {"gt": 2, "hits@1": 1, "R@1": 50.0, "hits@2": 1, "R@2": 50.0,
                                             "hits@3": 1, "R@3": 50.0}


def test_majority_vote_category():
    gt = gt_graph([Relation(0, 1, "holding", [(0, 5)])])
    rel = [Relation(10, 11, "holding", [(0, 5)], score=1.0)]
    # the tube's own category says bottle, but 4 of its 6 frames say cup
    votes_cup = ["cup", "bottle", "cup", "cup", "bottle", "cup"]
    assert score(pred_graph(rel, cup_label="bottle", cup_cats=votes_cup), gt, "pvsg")["R@1"] == 100.0
    votes_bottle = ["bottle", "bottle", "cup", "cup", "bottle", "cup"]  # 3:3 tie -> first seen, bottle
    assert score(pred_graph(rel, cup_label="cup", cup_cats=votes_bottle), gt, "pvsg")["R@1"] == 0.0
    assert score(pred_graph(rel, cup_label="cup", cup_cats=votes_bottle), gt, "volumetric")["R@1"] == 0.0


def test_mask_iou_and_viou_thresholds_are_inclusive():
    gt = gt_graph([Relation(0, 1, "holding", [(0, 3)])])
    half = (0, 1, 0, 4)  # 4 of the 8 person pixels: IoU exactly 0.5
    off = (1, 3, 0, 4)  # IoU 4/12
    rel = [Relation(10, 11, "holding", [(0, 5)], score=1.0)]
    # G = {0,1,2,3}; H = {0, 1} -> viou = 2/4 = 0.5 -> hit
    two_good = rows_tube(T, {0: half, 1: half, 2: off, 3: off, 4: off, 5: off})
    assert score(pred_graph(rel, person=two_good), gt, "pvsg")["R@1"] == 100.0
    # H = {0} -> 1/4 -> miss
    one_good = rows_tube(T, {0: half, 1: off, 2: off, 3: off, 4: off, 5: off})
    assert score(pred_graph(rel, person=one_good), gt, "pvsg")["R@1"] == 0.0


def test_predicted_span_must_cover_the_hit_frames():
    gt = gt_graph([Relation(0, 1, "holding", [(0, 5)])])
    # |H ∩ P| / |G| with G = H = all 6 frames: P = [0, 2] -> 3/6 hit; P = [0, 1] -> 2/6 miss
    assert score(pred_graph([Relation(10, 11, "holding", [(0, 2)], score=1.0)]), gt, "pvsg")["R@1"] == 100.0
    assert score(pred_graph([Relation(10, 11, "holding", [(0, 1)], score=1.0)]), gt, "pvsg")["R@1"] == 0.0


def test_gt_pair_never_visible_counts_but_cannot_hit():
    # the cup is absent in frames 0-3, so G over the span [0, 3] is empty: public code gives viou 0
    gt = gt_graph([Relation(0, 1, "holding", [(0, 3)]), Relation(0, 1, "on", [(4, 5)])], cup_frames=range(4, 6))
    pred = pred_graph(
        [Relation(10, 11, "holding", [(0, 3)], score=1.0), Relation(10, 11, "on", [(4, 5)], score=0.5)],
        cup=box_tube(T, CUP, frames=range(4, 6)),
    )
    r = score(pred, gt, "pvsg")
    # 1 of 2 GT relations; mR = (0/1 + 1/1) / 2
    assert r["R@3"] == 50.0 and r["mR@3"] == 50.0
    assert r["per_predicate"]["holding"]["R@3"] == 0.0


def test_mean_recall_averages_over_predicates_with_gt():
    gt = gt_graph(
        [Relation(0, 1, "holding", [(0, 5)]), Relation(0, 1, "holding", [(0, 1)]), Relation(1, 0, "on", [(0, 5)])],
        predicate_vocab=["holding", "on", "touching"],
    )
    pred = pred_graph([Relation(10, 11, "holding", [(0, 5)], score=1.0), Relation(11, 10, "on", [(0, 5)], score=0.5)])
    r = score(pred, gt, "volumetric")
    # volumetric: holding [0,5] hit; holding [0,1]: span IoU 2/6 -> miss; on hit. R = 2/3, mR = (1/2 + 1) / 2
    assert r["R@3"] == pytest.approx(200 / 3) and r["mR@3"] == pytest.approx(75.0)
    # touching has no GT: listed, excluded from mR
    assert r["per_predicate"]["touching"] == {"gt": 0, "hits@1": 0, "R@1": None, "hits@2": 0, "R@2": None,
                                              "hits@3": 0, "R@3": None}
    # pvsg: holding [0,1] is hit by the same candidate (2/2) -> 3/3
    assert score(pred, gt, "pvsg")["R@3"] == 100.0


# ------------------------------------------------------------------ volumetric specifics


def test_graph_constraint_keeps_best_predicate_per_pair():
    gt = gt_graph([Relation(0, 1, "holding", [(0, 5)])])
    pred = pred_graph([Relation(10, 11, "touching", [(0, 5)], score=0.9), Relation(10, 11, "holding", [(0, 5)], 0.8)])
    free = score(pred, gt, "volumetric")
    assert (free["R@1"], free["R@2"]) == (0.0, 100.0)
    assert score(pred, gt, "volumetric", graph_constraint=True)["R@3"] == 0.0
    assert score(pred, gt, "pvsg", graph_constraint=True)["R@3"] == 0.0


def test_volumetric_frames_outside_truth_cost():
    gt = gt_graph([Relation(0, 1, "holding", [(0, 3)])])
    # span [0, 5]: subject vIoU = 32 / (32 + 48 - 32) = 2/3, span IoU 4/6 -> match
    assert score(pred_graph([Relation(10, 11, "holding", [(0, 5)], score=1.0)]), gt, "volumetric")["R@1"] == 100.0
    # a predicted person twice the size (16 px): vIoU = 32 / (32 + 64 - 32) = 0.5 -> still matches at >= 0.5
    big = box_tube(T, (0, 4, 0, 4))
    r = score(pred_graph([Relation(10, 11, "holding", [(0, 3)], score=1.0)], person=big), gt, "volumetric")
    assert r["R@1"] == 100.0
    # ... and not at a stricter threshold
    r = score(pred_graph([Relation(10, 11, "holding", [(0, 3)], score=1.0)], person=big), gt, "volumetric",
              iou_threshold=0.6)
    assert r["R@1"] == 0.0


def test_volumetric_greedy_gives_each_candidate_its_best_gt():
    gt = gt_graph([Relation(0, 1, "holding", [(0, 3)]), Relation(0, 1, "holding", [(0, 5)])])
    pred = pred_graph([Relation(10, 11, "holding", [(0, 5)], score=1.0), Relation(10, 11, "holding", [(0, 3)], 0.5)])
    # rank 0 ([0,5]) matches GT0 with vIoU 2/3 and GT1 with 1 -> takes GT1; rank 1 ([0,3]) takes GT0
    metric = SceneGraphRecall(protocol="volumetric", ks=(1, 2))
    ranks = metric.update(pred, gt)
    assert ranks.tolist() == [1, 0]


# ------------------------------------------------------------------ labels


def test_unmapped_free_text_counts_as_wrong_and_label_map_fixes_it():
    gt = gt_graph([Relation(0, 1, "holding", [(0, 5)])], object_vocab=["person", "cup"],
                  predicate_vocab=["holding", "on"])
    pred = pred_graph([Relation(10, 11, " Is Holding", [(0, 5)], score=1.0)], cup_label="Coffee  Mug")
    r = score(pred, gt, "pvsg")
    assert r["R@3"] == 0.0
    assert r["unmapped_labels"]["objects"] == 1 and r["unmapped_labels"]["predicates"] == 1
    lm = LabelMap.from_dict({"objects": {"coffee mug": "Cup"}, "predicates": {"is holding": "holding"}})
    r = score(pred, gt, "pvsg", label_map=lm)
    assert r["R@1"] == 100.0
    assert r["unmapped_labels"]["objects"] == 0 and r["unmapped_labels"]["predicates"] == 0


def test_case_and_whitespace_are_normalised():
    gt = gt_graph([Relation(0, 1, "Holding", [(0, 5)])])
    pred = pred_graph([Relation(10, 11, "  holding ", [(0, 5)], score=1.0)], cup_label="CUP")
    assert score(pred, gt, "volumetric")["R@1"] == 100.0


def test_label_map_file_errors(tmp_path):
    bad = tmp_path / "lm.json"
    bad.write_text('{"objects": {"mug": "cup", "Mug ": "glass"}}')
    with pytest.raises(DataError, match="'Mug ' maps to both 'cup' and 'glass'"):
        LabelMap.load(bad)
    bad.write_text('{"object": {}}')
    with pytest.raises(DataError, match="unknown keys"):
        LabelMap.load(bad)


# ------------------------------------------------------------------ errors and bookkeeping


def test_errors_name_the_video():
    gt = gt_graph([Relation(0, 1, "holding", [(0, 5)])], vid="vidA")
    ok = pred_graph([Relation(10, 11, "holding", [(0, 5)], score=1.0)], vid="vidA")
    stranger = pred_graph([Relation(10, 11, "holding", [(0, 5)], score=1.0)], vid="vidZ")
    with pytest.raises(DataError, match="vidZ.*not in the ground truth"):
        evaluate([ok, stranger], [gt])
    with pytest.raises(DataError, match="vidA.*twice"):
        evaluate([ok, ok], [gt])
    short = pred_graph([Relation(10, 11, "holding", [(0, 4)], score=1.0)], vid="vidA",
                       person=box_tube(T - 1, PERSON))
    with pytest.raises(DataError, match="vidA.*5 frames, video has 6"):
        evaluate([short], [gt])
    nan = pred_graph([Relation(10, 11, "holding", [(0, 5)], score=math.nan)], vid="vidA")
    with pytest.raises(DataError, match="vidA.*NaN"):
        evaluate([nan], [gt])


def test_missing_predictions_are_misses_and_listed():
    gts = [gt_graph([Relation(0, 1, "holding", [(0, 5)])], vid=v, object_vocab=["person", "cup"]) for v in "ab"]
    r = evaluate([pred_graph([Relation(10, 11, "holding", [(0, 5)], score=1.0)], vid="a")], gts, ks=(1,))
    assert r["R@1"] == 50.0
    assert r["missing_predictions"] == ["b"] and r["num_missing_predictions"] == 1
    # a missing video has nothing unmapped; the count stays defined
    assert r["unmapped_labels"]["objects"] == 0 and r["unmapped_labels"]["predicates"] is None


def test_fixed_predicate_list_rejects_unknown_gt_predicate_and_bad_settings():
    gt = gt_graph([Relation(0, 1, "holding", [(0, 5)])])
    m = SceneGraphRecall(predicates=["on"])
    with pytest.raises(DataError, match="holding"):
        m.update(None, gt)
    with pytest.raises(ConfigError):
        SceneGraphRecall(protocol="strict")
    with pytest.raises(ConfigError):
        SceneGraphRecall(ks=(0, 20))
