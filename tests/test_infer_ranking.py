"""Ranking candidate relations with the tubes' evidence, and its weights chosen on validation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from psg4d.cli import main
from psg4d.data.masks import rle_encode_batch
from psg4d.data.schema import MaskTube, ObjectTrack, Relation, SceneGraph4D
from psg4d.errors import DataError
from psg4d.infer.predictor import Predictor, ScoredCandidates, Tube
from psg4d.model.reading import Candidate
from psg4d.infer.ranking import FLOOR, RANKING_FILE, TEXT_ONLY, RankingWeights, load_ranking
from psg4d.model.psg4d_llm import PSG4DModel
from psg4d.tune_ranking import tune
from test_model_psg4d import tiny_config, trained_model


def test_score_hand_computed():
    both = np.array([True, True, False, False])
    assert RankingWeights().score(-3.0, 0.5, 0.2, both) == -3.0  # text only
    w = RankingWeights(quality=2.0, presence=0.5)
    assert w.score(-3.0, 0.5, 0.2, both) == pytest.approx(-3.0 + 2 * (math.log(0.5) + math.log(0.2)) + 0.5 * math.log(0.5))
    # a tube the decoder gives 0 and a pair never together are floored, not -inf
    assert w.score(0.0, 0.0, 1.0, np.zeros(4, bool)) == pytest.approx(2 * math.log(FLOOR) + 0.5 * math.log(FLOOR))


def test_load_ranking_file(tmp_path):
    assert load_ranking(tmp_path) == RankingWeights() and RankingWeights().chosen_on == TEXT_ONLY
    assert load_ranking(None) == RankingWeights()  # a model never saved: as its checkpoint before tuning
    (tmp_path / RANKING_FILE).write_text(json.dumps({"quality": 1.5, "presence": 0.0, "chosen_on": "val of w"}))
    assert load_ranking(tmp_path) == RankingWeights(quality=1.5, presence=0.0, chosen_on="val of w")
    (tmp_path / RANKING_FILE).write_text('{"quality": 1.5}')
    with pytest.raises(DataError, match="ranking.json.*not a ranking file"):
        load_ranking(tmp_path)
    (tmp_path / RANKING_FILE).write_text(json.dumps({"quality": -1, "presence": 0, "chosen_on": "x"}))
    with pytest.raises(DataError, match=">= 0"):
        load_ranking(tmp_path)


def _tube(masks: np.ndarray, quality: float) -> Tube:
    rles = rle_encode_batch(masks)
    return Tube([r if m.any() else None for r, m in zip(rles, masks)], quality)


def _world():
    """One 4-frame video: the truth is `person on table`. The candidates: 59 pairs of junk objects
    (tubes the decoder itself rates 0.05, in one frame) whose text the LLM prefers, and the right
    triplet on good tubes (rated 0.9, in every frame) with the lowest text score."""
    t, s = 4, 16
    a = np.zeros((t, s, s), bool)
    a[:, 0:6, 0:6] = True
    b = np.zeros((t, s, s), bool)
    b[:, 8:14, 8:14] = True
    junk = np.zeros((t, s, s), bool)
    junk[0, 6:8, 0:2] = True
    objects = [("person", _tube(a, 0.9)), ("table", _tube(b, 0.9))]
    objects += [(f"thing{k}", _tube(junk, 0.05)) for k in range(2)]
    cands = [Candidate(2, 3, f"p{k}", [(0, 3)], score=-1.0 - k / 100) for k in range(59)]
    cands.append(Candidate(0, 1, "on", [(0, 3)], score=-5.0))
    scored = ScoredCandidates(video_id="v", num_frames=t, size=(s, s), objects=objects, candidates=cands,
                              owner=np.arange(t), meta={})
    truth = SceneGraph4D("v", t, s, s, [ObjectTrack(0, "person", tube=MaskTube.from_dense(a)),
                                        ObjectTrack(1, "table", tube=MaskTube.from_dense(b))],
                         [Relation(0, 1, "on", [(0, 3)])])
    return scored, {"v": truth}


def test_tube_evidence_lifts_the_right_triplet_and_tuning_finds_the_weights():
    predictor = Predictor(model=PSG4DModel.from_config(tiny_config()))
    assert predictor.ranking == RankingWeights()  # no checkpoint: text only
    scored, truth = _world()
    text_only = predictor.rank(scored)
    assert [r.predicate for r in text_only.relations].index("on") == 59  # last: outside the top 50
    assert text_only.meta["ranking"]["quality"] == 0.0
    lifted = predictor.rank(scored, RankingWeights(quality=1.0, chosen_on="test"))
    assert lifted.relations[0].predicate == "on" and lifted.meta["ranking"]["chosen_on"] == "test"
    assert lifted.relations[0].score == pytest.approx(-5.0 + 2 * math.log(0.9))
    best, table = tune(predictor, [scored], truth, quality_grid=(0.0, 1.0, 4.0), presence_grid=(0.0, 1.0, 4.0),
                       source="the test's world")
    rows = {(r["quality"], r["presence"]): r for r in table}
    assert rows[(0.0, 0.0)]["pvsg_R@50"] == 0.0 and rows[(1.0, 0.0)]["pvsg_R@50"] == 100.0
    # presence alone: weight 1 is not enough (-1 + log 0.25 > -5), weight 4 is
    assert rows[(0.0, 1.0)]["pvsg_R@50"] == 0.0 and rows[(0.0, 4.0)]["pvsg_R@50"] == 100.0
    # ties go to the smaller weights
    assert (best.quality, best.presence, best.chosen_on) == (1.0, 0.0, "the test's world")


def test_predictor_reads_the_checkpoints_ranking_file(tmp_path):
    model, sample, _ = trained_model()
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    loaded = PSG4DModel.from_pretrained(ckpt)
    assert loaded.checkpoint_dir == ckpt
    plain = Predictor(model=loaded).predict(sample.video)
    assert plain.meta["ranking"]["chosen_on"] == TEXT_ONLY
    (ckpt / RANKING_FILE).write_text(json.dumps({"quality": 3.0, "presence": 1.0, "chosen_on": "val split of w"}))
    ranked = Predictor(model=PSG4DModel.from_pretrained(ckpt)).predict(sample.video)
    assert ranked.meta["ranking"] == {"quality": 3.0, "presence": 1.0, "chosen_on": "val split of w"}
    text = {(r.subject_id, r.object_id, r.predicate): r.score for r in plain.relations}
    q = {o.object_id: o.score for o in ranked.objects}
    present = {o.object_id: np.array([r is not None for r in o.tube.rles]) for o in ranked.objects}
    for r in ranked.relations[:20]:
        expect = RankingWeights(quality=3.0, presence=1.0).score(
            text[(r.subject_id, r.object_id, r.predicate)], q[r.subject_id], q[r.object_id],
            present[r.subject_id] & present[r.object_id])
        assert r.score == pytest.approx(expect, abs=1e-4)
    scores = [r.score for r in ranked.relations]
    assert scores == sorted(scores, reverse=True)


def test_tune_ranking_command_refuses_the_test_split_and_an_existing_file(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    assert main(["tune-ranking", "--ckpt", str(ckpt), "--data", str(tmp_path), "--split", "test"]) == 2
    assert "validation split" in capsys.readouterr().err
    (ckpt / RANKING_FILE).write_text("{}")
    assert main(["tune-ranking", "--ckpt", str(ckpt), "--data", str(tmp_path)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_the_unknown_margin_keeps_the_chosen_share_of_validation_objects_known(tmp_path):
    from psg4d.infer.ranking import choose_unknown_margin, load_unknown_margin

    margins = [0.1 * k for k in range(20)]  # 0.0 .. 1.9
    # 95 % of 20: 19 objects at or below the margin -> the 19th smallest, 1.8
    assert choose_unknown_margin(margins, 0.95) == pytest.approx(1.8)
    assert choose_unknown_margin(margins, 0.5) == pytest.approx(0.9)  # 10 of 20 at or below
    assert choose_unknown_margin([]) == 0.0
    assert load_unknown_margin(tmp_path) is None
    f = tmp_path / RANKING_FILE
    f.write_text(json.dumps({"quality": 0, "presence": 0, "chosen_on": "val",
                             "unknown_margin": {"margin": 1.8, "keep": 0.95, "objects": 20, "chosen_on": "val split"}}))
    assert load_unknown_margin(tmp_path) == (1.8, "val split")
    f.write_text(json.dumps({"quality": 0, "presence": 0, "chosen_on": "val", "unknown_margin": {"margin": -1,
                                                                                                "chosen_on": "x"}}))
    with pytest.raises(DataError, match="unknown_margin must be"):
        load_unknown_margin(tmp_path)


def test_the_chained_predictor_reads_the_checkpoints_unknown_margin(tmp_path):
    from psg4d.infer.chain import ChainPredictor
    from psg4d.infer.chain_naming import UNCHOSEN_MARGIN
    from psg4d.infer.predictor import PredictorConfig

    model = PSG4DModel.from_config(tiny_config(chain_prob=1.0))
    model.save_pretrained(tmp_path)
    model = PSG4DModel.from_pretrained(tmp_path)
    assert ChainPredictor(model=model).naming.unknown_margin_chosen_on == UNCHOSEN_MARGIN
    (tmp_path / RANKING_FILE).write_text(json.dumps({"quality": 0, "presence": 0, "chosen_on": "val",
                                                     "unknown_margin": {"margin": 0.7, "chosen_on": "val split"}}))
    chain = ChainPredictor(model=model)
    assert (chain.naming.unknown_margin, chain.naming.unknown_margin_chosen_on) == (0.7, "val split")
    given = ChainPredictor(model=model, config=PredictorConfig(mode="chain", unknown_margin=0.2))
    assert given.naming.unknown_margin == 0.2 and "given" in given.naming.unknown_margin_chosen_on
