"""``psg4d eval`` on files, on a dataset folder, and with --ckpt (predictor monkeypatched)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_eval_support import CATS, PREDS, noisy_prediction, perfect_prediction, random_gt

import psg4d.data.readers as readers
from psg4d.cli import main
from psg4d.data.schema import iter_scene_graphs, save_scene_graphs
from psg4d.eval import evaluate


@pytest.fixture()
def split_files(tmp_path):
    rng = np.random.default_rng(3)
    gts = [random_gt(rng, f"vid{i}") for i in range(3)]
    preds = [noisy_prediction(rng, g) for g in gts[:2]]
    save_scene_graphs(tmp_path / "gt.jsonl", gts)
    save_scene_graphs(tmp_path / "pred.jsonl", preds)
    return tmp_path, gts, preds


def test_eval_files_table_and_json_out(split_files, capsys):
    d, gts, preds = split_files
    assert main(["eval", "--pred", str(d / "pred.jsonl"), "--gt", str(d / "gt.jsonl"), "--protocol", "volumetric",
                 "--out", str(d / "m.json")]) == 0
    table = capsys.readouterr().out
    assert "R@20" in table and "mR@100" in table and "missing predictions 1" in table
    written = json.loads((d / "m.json").read_text())
    expected = evaluate(preds, gts, protocol="volumetric")
    assert written["R@50"] == pytest.approx(expected["R@50"])
    assert written["per_predicate"] == json.loads(json.dumps(expected["per_predicate"]))
    assert written["missing_predictions"] == ["vid2"]
    assert f"{expected['R@20']:.2f}" in table


def test_eval_validates_each_graph_once(split_files, capsys, monkeypatch):
    """Predictions and ground truth are validated as their files are read, not again by the metric."""
    from psg4d.data.schema import SceneGraph4D

    d, gts, preds = split_files
    seen: list[str] = []
    original = SceneGraph4D.validate

    def counting(self, *args, **kwargs):
        seen.append(self.video_id)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SceneGraph4D, "validate", counting)
    assert main(["eval", "--pred", str(d / "pred.jsonl"), "--gt", str(d / "gt.jsonl"), "--json"]) == 0
    capsys.readouterr()
    # 3 ground-truth graphs and 2 predictions, each once
    assert sorted(seen) == sorted([g.video_id for g in gts] + [p.video_id for p in preds])
    # the library call on graphs nobody validated still validates them
    seen.clear()
    evaluate(preds, gts)
    assert len(seen) == len(gts) + len(preds)


def test_eval_json_flag_graph_constraint_and_label_map(split_files, capsys):
    d, gts, _ = split_files
    perfect = [perfect_prediction(g) for g in gts]
    for p in perfect:
        for o in p.objects:
            o.category = "Mug Thing" if o.category == "cup" else o.category
    save_scene_graphs(d / "perfect.jsonl", perfect)
    (d / "lm.json").write_text(json.dumps({"objects": {"mug thing": "cup"}}))
    args = ["eval", "--pred", str(d / "perfect.jsonl"), "--gt", str(d / "gt.jsonl"), "--json"]
    assert main(args) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(args + ["--label-map", str(d / "lm.json")]) == 0
    mapped = json.loads(capsys.readouterr().out)
    assert mapped["R@100"] == 100.0
    assert mapped["unmapped_labels"]["objects"] == 0
    # seed 3 gives two cups: without the map they are unmapped free text
    assert plain["unmapped_labels"]["objects"] == 2
    assert plain["unmapped_labels"]["examples"] == ["object:Mug Thing"]
    assert main(args + ["--graph-constraint"]) == 0
    assert json.loads(capsys.readouterr().out)["settings"]["graph_constraint"] is True


def test_eval_errors_exit_2(split_files, capsys):
    d, _, _ = split_files
    assert main(["eval", "--gt", str(d / "gt.jsonl")]) == 2
    assert "exactly one of --pred" in capsys.readouterr().err
    assert main(["eval", "--pred", str(d / "pred.jsonl"), "--gt", str(d / "gt.jsonl"), "--protocol", "x"]) == 2
    assert main(["eval", "--pred", str(d / "pred.jsonl"), "--gt", str(d / "gt.jsonl"), "--split", "val"]) == 2
    assert "dataset folder" in capsys.readouterr().err
    # a prediction for a video the GT does not have
    save_scene_graphs(d / "gt_small.jsonl", [])
    assert main(["eval", "--pred", str(d / "pred.jsonl"), "--gt", str(d / "gt_small.jsonl")]) == 2
    assert "vid0" in capsys.readouterr().err


class FakeReader:
    splits = ["train", "val"]
    object_vocab = CATS
    predicate_vocab = PREDS

    def __init__(self, graphs):
        self.graphs = graphs
        self.asked = []

    def iter_graphs(self, split=None):
        self.asked.append(split)
        return iter(self.graphs)


def test_eval_dataset_folder_and_ckpt(split_files, monkeypatch, capsys):
    d, gts, preds = split_files
    data = d / "dataset"
    data.mkdir()
    reader = FakeReader(gts)
    monkeypatch.setattr(readers, "open_dataset", lambda path, format=None: reader, raising=False)
    calls = []

    def predict_split(ckpt_dir, data_path, split, limit=None, progress=False, options=None):
        calls.append((str(ckpt_dir), str(data_path), split))
        return iter(preds if limit is None else preds[:limit])

    monkeypatch.setattr("psg4d.infer.predictor_factory.predict_split", predict_split)

    assert main(["eval", "--ckpt", str(d / "ckpt"), "--data", str(data), "--split", "val", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert calls == [(str(d / "ckpt"), str(data), "val")] and reader.asked == ["val"]
    expected = evaluate(preds, gts, predicates=PREDS, objects=CATS)
    assert got["R@20"] == pytest.approx(expected["R@20"]) and got["inputs"]["split"] == "val"

    assert main(["eval", "--pred", str(d / "pred.jsonl"), "--gt", str(data), "--split", "train", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mR@50"] == pytest.approx(expected["mR@50"])
    assert main(["eval", "--pred", str(d / "pred.jsonl"), "--gt", str(data)]) == 2  # two splits, none chosen
    assert "--split" in capsys.readouterr().err

    # --limit: the first video only, of the predictions and of the ground truth; --save-pred keeps them
    saved = d / "saved.jsonl"
    assert main(["eval", "--ckpt", str(d / "ckpt"), "--data", str(data), "--split", "val", "--json",
                 "--limit", "1", "--save-pred", str(saved)]) == 0
    got = json.loads(capsys.readouterr().out)
    first = evaluate(preds[:1], gts[:1], predicates=PREDS, objects=CATS)
    assert got["R@50"] == pytest.approx(first["R@50"])
    assert [g.video_id for g in iter_scene_graphs(saved)] == [preds[0].video_id]
    assert main(["eval", "--pred", str(saved), "--gt", str(data), "--split", "val", "--limit", "0"]) == 2
    assert main(["eval", "--pred", str(saved), "--gt", str(data), "--split", "val", "--save-pred", "x"]) == 2


def test_eval_against_a_synthetic_dataset_folder(tmp_path, capsys):
    """End to end with the real reader: the ground truth read back as a prediction scores 100."""
    out = tmp_path / "synth"
    assert main(["synth", "--preset", "hoi", "--videos", "6", "--images", "3", "--frames", "6", "--size", "32",
                 "--seed", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    reader = readers.open_dataset(out / "4d")
    gts = list(reader.iter_graphs("train"))
    preds = [perfect_prediction(g) for g in gts]
    save_scene_graphs(tmp_path / "pred.jsonl", preds)
    for protocol in ("pvsg", "volumetric"):
        assert main(["eval", "--pred", str(tmp_path / "pred.jsonl"), "--gt", str(out / "4d"), "--split", "train",
                     "--protocol", protocol, "--json"]) == 0
        r = json.loads(capsys.readouterr().out)
        assert r["num_videos"] == len(gts) and r["num_gt_relations"] == sum(len(g.relations) for g in gts) > 0
        assert r["R@100"] == 100.0 and r["mR@100"] == 100.0
        assert r["unmapped_labels"]["objects"] == 0 and r["unmapped_labels"]["predicates"] == 0
