"""Hand-computed weak recall, pair recall, zero-shot zR@K and the graph-constraint blocks.

Videos are 4x4 pixels, 10 frames. ``PERSON`` fills rows 0-1 (8 px), ``CUP`` (or ``DOG``) rows 2-3.
A predicted tube that is exact in frames 0-2 and absent after has, against a GT relation spanning
all 10 frames, vIoU 0.3 under both protocols:

* ``pvsg``: H (frames with both masks at IoU >= 0.5) = {0, 1, 2}, G = 10 frames -> 3/10;
* ``volumetric``: tube vIoU = 3*8 / (10*8 + 3*8 - 3*8) = 0.3, span IoU 1.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_eval_support import box_tube, graph, noisy_prediction, random_gt

from psg4d.cli import main
from psg4d.data.schema import ObjectTrack, Relation, save_scene_graphs
from psg4d.errors import ConfigError
from psg4d.eval import (
    SceneGraphRecall,
    ZeroShot,
    candidate_list,
    candidate_views,
    evaluate,
    summary_table,
)

T = 10
ALL = [(0, T - 1)]
PERSON = (0, 2, 0, 4)
LOWER = (2, 4, 0, 4)
PROTOCOLS = ["pvsg", "volumetric"]


def gt_video(vid, relations, *, second="cup"):
    objs = [ObjectTrack(0, "person", tube=box_tube(T, PERSON)), ObjectTrack(1, second, tube=box_tube(T, LOWER))]
    return graph(vid, T, objs, relations)


def pred_video(vid, relations, *, second="cup"):
    objs = [
        ObjectTrack(10, "person", tube=box_tube(T, PERSON)),
        ObjectTrack(11, second, tube=box_tube(T, LOWER)),
        ObjectTrack(12, "person", tube=box_tube(T, PERSON, frames=range(3))),  # vIoU 0.3 (module doc)
    ]
    return graph(vid, T, objs, relations)


def ks_of(r, prefix, ks=(1, 2, 3)):
    return tuple(round(r[f"{prefix}@{k}"], 2) for k in ks)


# ------------------------------------------------------------------ the discriminating single cases


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_viou_0_3_counts_for_weak_recall_but_not_strict(protocol):
    gt = gt_video("a", [Relation(0, 1, "holding", ALL)])
    pred = pred_video("a", [Relation(12, 11, "holding", ALL, score=1.0)])
    r = evaluate([pred], [gt], protocol=protocol, ks=(1,))
    assert (r["R@1"], r["weak R@1"], r["pair R@1"]) == (0.0, 100.0, 0.0)
    assert r["weak mR@1"] == 100.0 and r["mR@1"] == 0.0
    # at a weak threshold above 0.3 it is a miss too
    assert evaluate([pred], [gt], protocol=protocol, ks=(1,), weak_viou_threshold=0.31)["weak R@1"] == 0.0


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_right_pair_with_wrong_predicate_counts_for_pair_recall_only(protocol):
    gt = gt_video("a", [Relation(0, 1, "holding", ALL)])
    pred = pred_video("a", [Relation(10, 11, "touching", ALL, score=1.0)])
    r = evaluate([pred], [gt], protocol=protocol, ks=(1,))
    assert (r["R@1"], r["weak R@1"], r["pair R@1"]) == (0.0, 0.0, 100.0)
    # the wrong subject category is not a pair
    pred = pred_video("a", [Relation(11, 10, "holding", ALL, score=1.0)])
    assert evaluate([pred], [gt], protocol=protocol, ks=(1,))["pair R@1"] == 0.0


def test_pvsg_weak_hit_counts_once_per_gt_relation():
    # OpenPVSG's loop would add a weak hit for each of the two candidates (200%); here one hit
    gt = gt_video("a", [Relation(0, 1, "holding", ALL)])
    pred = pred_video("a", [Relation(12, 11, "holding", ALL, score=1.0), Relation(12, 11, "holding", ALL, score=0.5)])
    assert evaluate([pred], [gt], protocol="pvsg", ks=(2,))["weak R@2"] == 100.0


# ------------------------------------------------------------------ one ranked list, every number by hand

# GT r0 (person, holding, cup), r1 (person, looking at, cup), both over all frames. Candidates by score:
#   c0 (person 10, touching, cup): right pair, wrong predicate for both
#   c1 (person 12, holding, cup): the 0.3-vIoU person, right labels for r0
#   c2 (person 10, looking at, cup): exact r1; same pair as c0, so the graph constraint drops it
GT_A = [Relation(0, 1, "holding", ALL), Relation(0, 1, "looking at", ALL)]
PRED_A = [
    Relation(10, 11, "touching", ALL, score=0.9),
    Relation(12, 11, "holding", ALL, score=0.8),
    Relation(10, 11, "looking at", ALL, score=0.7),
]

# protocol -> block -> prefix -> (K=1, K=2, K=3)
EXPECTED_A = {
    "pvsg": {
        # strict: r1 at rank 2; weak: r0 at 1 (c1), r1 at 2; pair: c0 hits r0 and r1 at rank 0 (no one-to-one)
        "no_graph_constraint": {"R": (0, 0, 50), "mR": (0, 0, 50), "weak R": (0, 50, 100), "weak mR": (0, 50, 100),
                                "pair R": (100, 100, 100)},
        # list c0, c1: no strict hit; weak r0 at 1; pair as above
        "graph_constraint": {"R": (0, 0, 0), "mR": (0, 0, 0), "weak R": (0, 50, 50), "weak mR": (0, 50, 50),
                             "pair R": (100, 100, 100)},
    },
    "volumetric": {
        # pair: c0 takes r0 only (one-to-one, tie -> earlier GT); c1 fails 0.5; c2 takes r1 (right predicate)
        "no_graph_constraint": {"R": (0, 0, 50), "mR": (0, 0, 50), "weak R": (0, 50, 100), "weak mR": (0, 50, 100),
                                "pair R": (50, 50, 100)},
        "graph_constraint": {"R": (0, 0, 0), "mR": (0, 0, 0), "weak R": (0, 50, 50), "weak mR": (0, 50, 50),
                             "pair R": (50, 50, 50)},
    },
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("graph_constraint", [False, True])
def test_ranked_list_by_hand_with_and_without_graph_constraint(protocol, graph_constraint):
    r = evaluate([pred_video("a", PRED_A)], [gt_video("a", GT_A)], protocol=protocol, ks=(1, 2, 3),
                 graph_constraint=graph_constraint)
    for block, want in EXPECTED_A[protocol].items():
        for prefix, values in want.items():
            assert ks_of(r[block], prefix) == values, (block, prefix)
    # the plain keys are the configured block's; per_predicate follows them
    main_block = r["graph_constraint" if graph_constraint else "no_graph_constraint"]
    assert {k: r[k] for k in main_block} == main_block
    assert r["settings"]["graph_constraint"] is graph_constraint
    assert r["per_predicate"]["looking at"]["hits@3"] == (0 if graph_constraint else 1)
    assert r["zero_shot"] is None and not any("zR@" in k for k in r)


def test_table_labels_every_row():
    gt, pred = gt_video("a", GT_A), pred_video("a", PRED_A)
    r = evaluate([pred], [gt], ks=(1, 2, 3), zero_shot=ZeroShot(seen_triplets=[("person", "holding", "cup")]))
    table = summary_table(r)
    lines = table.splitlines()
    assert "R@1" in lines[0] and "mR@3" in lines[0]
    row = next(line for line in lines if line.startswith("weak, vIoU >= 0.1") and "no graph constraint" in line)
    assert row.split()[-6:] == ["0.00", "50.00", "100.00", "0.00", "50.00", "100.00"]
    marked = [line for line in lines if line.rstrip().endswith("*") or " * " in line]
    assert len(marked) == 1 and marked[0].startswith("triplet") and "no graph constraint *" in marked[0]
    assert any(line.startswith("zero-shot zR") and "graph constraint" in line for line in lines)
    assert "zero-shot subset: 1 GT relations" in table


# ------------------------------------------------------------------ zero-shot subsets

# video b: (person, holding, dog), predicted exactly at rank 0
GT_B = gt_video("b", [Relation(0, 1, "holding", ALL)], second="dog")
PRED_B = pred_video("b", [Relation(10, 11, "holding", ALL, score=1.0)], second="dog")
TRAIN = [gt_video("t", [Relation(0, 1, "holding", ALL)])]  # saw person, cup and (person, holding, cup)


def split_ab():
    return [pred_video("a", PRED_A), PRED_B], [gt_video("a", GT_A), GT_B]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_zero_shot_triplets_exclude_those_seen_in_training(protocol):
    preds, gts = split_ab()
    zs = ZeroShot.from_graphs(TRAIN)
    assert zs.seen_triplets == {("person", "holding", "cup")}
    r = evaluate(preds, gts, protocol=protocol, ks=(1, 2, 3), zero_shot=zs)
    # subset: a.r1 (looking at, hit at rank 2) and b.r0 (holding a dog: unseen triplet, hit at 0); a.r0 is seen
    assert r["zero_shot"]["num_gt_relations"] == 2 and r["num_gt_relations"] == 3
    assert ks_of(r, "zR") == (50, 50, 100)
    # all three: a.r1 at 2, b.r0 at 0
    assert ks_of(r, "R") == (33.33, 33.33, 66.67)
    # weak: same two, same ranks (a.r0's weak hit is outside the subset)
    assert ks_of(r, "weak zR") == (50, 50, 100)
    pair = {"pvsg": (100, 100, 100), "volumetric": (50, 50, 100)}[protocol]  # a.r1 paired by c0 in pvsg only
    assert ks_of(r, "pair zR") == pair
    assert ks_of(r["graph_constraint"], "zR") == (50, 50, 50)  # a.r1 needs c2, dropped by the constraint
    # the same subset given directly, labels normalised
    direct = evaluate(preds, gts, protocol=protocol, ks=(1, 2, 3),
                      zero_shot=ZeroShot(seen_triplets={(" Person", "HOLDING", "cup")}))
    assert {k: direct[k] for k in r if "zR@" in k} == {k: r[k] for k in r if "zR@" in k}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_zero_shot_categories_and_novel_category_sets(protocol):
    preds, gts = split_ab()
    # categories: the dog is unseen, so only b.r0 counts
    r = evaluate(preds, gts, protocol=protocol, ks=(1, 3), zero_shot=ZeroShot.from_graphs(TRAIN, by="categories"))
    assert r["zero_shot"]["num_gt_relations"] == 1 and (r["zR@1"], r["zR@3"]) == (100.0, 100.0)
    assert "unseen" in r["zero_shot"]["subset"]
    # relations involving a given category set: {"dog"} is the same subset; {"Cup"} is video a's two
    dog = evaluate(preds, gts, protocol=protocol, ks=(1, 3), zero_shot=ZeroShot(novel_categories={"dog"}))
    assert (dog["zR@1"], dog["zero_shot"]["num_gt_relations"]) == (100.0, 1)
    cup = evaluate(preds, gts, protocol=protocol, ks=(1, 3), zero_shot=ZeroShot(novel_categories=["Cup"]))
    assert cup["zero_shot"]["num_gt_relations"] == 2
    assert (cup["zR@1"], cup["zR@3"]) == (0.0, 50.0)  # a.r1 at rank 2
    assert cup["weak zR@3"] == 100.0  # and a.r0 weakly at rank 1
    # a category nobody has: an empty subset scores 0 and says so
    none = evaluate(preds, gts, protocol=protocol, ks=(1,), zero_shot=ZeroShot(novel_categories={"horse"}))
    assert none["zero_shot"]["num_gt_relations"] == 0 and none["zR@1"] == 0.0


def test_volumetric_pair_matching_keeps_a_right_triplet_on_its_gt():
    # one exact candidate "looking at" for a pair with GT holding (r0) and looking at (r1): by quality alone
    # (a tie) one-to-one matching would give it r0, leaving r1 hit as a triplet but not as a pair
    gt = gt_video("a", GT_A)
    pred = pred_video("a", [Relation(10, 11, "looking at", ALL, score=1.0)])
    r = evaluate([pred], [gt], protocol="volumetric", ks=(1,),
                 zero_shot=ZeroShot(seen_triplets=[("person", "holding", "cup")]))  # subset: r1
    assert (r["R@1"], r["pair R@1"]) == (50.0, 50.0)
    assert (r["zR@1"], r["pair zR@1"]) == (100.0, 100.0)


def test_zero_shot_bad_definitions():
    with pytest.raises(ConfigError, match="exactly one"):
        ZeroShot()
    with pytest.raises(ConfigError, match="exactly one"):
        ZeroShot(novel_categories={"dog"}, seen_categories={"cup"})
    with pytest.raises(ConfigError, match="the string 'dog'"):
        ZeroShot(novel_categories="dog")
    with pytest.raises(ConfigError, match="label triples"):
        ZeroShot(seen_triplets=[("person", "holding")])
    with pytest.raises(ConfigError, match="triplets, categories"):
        ZeroShot.from_graphs(TRAIN, by="objects")
    with pytest.raises(ConfigError, match="ZeroShot"):
        SceneGraphRecall(zero_shot={"dog"})


# ------------------------------------------------------------------ state and candidate lists


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_state_of_two_metrics_sums_to_the_state_of_one(protocol):
    preds, gts = split_ab()
    kw = dict(protocol=protocol, ks=(1, 2, 3), predicates=["holding", "looking at", "touching"],
              zero_shot=ZeroShot(novel_categories={"dog"}))
    whole, part_a, part_b = SceneGraphRecall(**kw), SceneGraphRecall(**kw), SceneGraphRecall(**kw)
    for p, g in zip(preds, gts):
        whole.update(p, g)
    part_a.update(preds[0], gts[0])
    part_b.update(preds[1], gts[1])
    sa, sb = part_a.sync(), part_b.sync()
    sa.hits, sa.gt = sa.hits + sb.hits, sa.gt + sb.gt
    sa.counters = {k: sa.counters[k] + sb.counters[k] for k in sa.counters}
    assert part_a.format(sa) == whole.compute()


def test_candidate_views_are_the_two_candidate_lists():
    rng = np.random.default_rng(5)
    for i in range(20):
        g = random_gt(rng, f"v{i}", n_rel=6)
        p = noisy_prediction(rng, g, n_extra=int(rng.integers(0, 30)))
        for max_k in (1, 3, 7, 50):
            cands, (free, constrained) = candidate_views(p, max_k=max_k)
            assert [cands[j] for j in free] == candidate_list(p, max_k=max_k, graph_constraint=False)
            assert [cands[j] for j in constrained] == candidate_list(p, max_k=max_k, graph_constraint=True)


# ------------------------------------------------------------------ CLI


def test_cli_zero_shot_flags(tmp_path, capsys):
    preds, gts = split_ab()
    save_scene_graphs(tmp_path / "pred.jsonl", preds)
    save_scene_graphs(tmp_path / "gt.jsonl", gts)
    save_scene_graphs(tmp_path / "train.jsonl", TRAIN)
    base = ["eval", "--pred", str(tmp_path / "pred.jsonl"), "--gt", str(tmp_path / "gt.jsonl")]
    assert main(base + ["--zero-shot-train", str(tmp_path / "train.jsonl"), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["zero_shot"]["num_gt_relations"] == 2 and r["zR@100"] == 100.0 and r["zR@20"] == 100.0
    assert r["inputs"]["zero_shot_train"] == str(tmp_path / "train.jsonl")
    assert main(base + ["--zero-shot-train", str(tmp_path / "train.jsonl"), "--zero-shot", "categories",
                        "--graph-constraint"]) == 0
    table = capsys.readouterr().out
    assert "zero-shot subset: 1 GT relations" in table and "graph constraint *" in table
    # bad combinations exit 2 with one line
    assert main(base + ["--zero-shot", "categories"]) == 2
    assert "need --zero-shot-train" in capsys.readouterr().err
    assert main(base + ["--zero-shot-train", str(tmp_path / "train.jsonl"), "--zero-shot", "objects"]) == 2
    assert "--zero-shot must be one of triplets, categories" in capsys.readouterr().err
    assert main(base + ["--zero-shot-train", str(tmp_path / "train.jsonl"), "--zero-shot-split", "train"]) == 2
    assert "scene-graph file" in capsys.readouterr().err
    assert main(base + ["--zero-shot-train", str(tmp_path / "nowhere.jsonl")]) == 2
    assert "not found" in capsys.readouterr().err
    save_scene_graphs(tmp_path / "empty.jsonl", [])
    assert main(base + ["--zero-shot-train", str(tmp_path / "empty.jsonl")]) == 2
    assert "no training scene graphs" in capsys.readouterr().err


def test_zero_shot_from_a_dataset_folder_reads_its_train_split(tmp_path, monkeypatch):
    import psg4d.data.readers as readers
    from psg4d.eval import load_zero_shot

    class Reader:
        splits = ["train", "val"]
        object_vocab = predicate_vocab = None
        asked: list = []

        def iter_graphs(self, split=None):
            self.asked.append(split)
            return iter(TRAIN if split == "train" else [GT_B])

    reader = Reader()
    monkeypatch.setattr(readers, "open_dataset", lambda path, format=None: reader, raising=False)
    (tmp_path / "data").mkdir()
    assert load_zero_shot(tmp_path / "data").seen_triplets == {("person", "holding", "cup")}
    assert load_zero_shot(tmp_path / "data", split="val", by="categories").seen_categories == {"person", "dog"}
    assert reader.asked == ["train", "val"]
    with pytest.raises(ConfigError, match="no split 'test'"):
        load_zero_shot(tmp_path / "data", split="test")
