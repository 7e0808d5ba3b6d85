"""What the README says the commands accept, against what they do (issue 25, item 5).

* ``psg4d train --set stages.0.max_steps=N`` on a preset whose stage sets ``epochs`` (and the reverse):
  a dotted override of one of an exclusive pair replaces the other.
* ``psg4d eval``'s warning about predicted labels outside the vocabulary counts distinct labels and
  the objects carrying them, and does not ask for a label map when one was given.
* ``psg4d viz --gt`` takes what ``psg4d eval --gt`` takes: a dataset folder as well as a file.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re

import numpy as np
import pytest
from test_eval_support import perfect_prediction, random_gt

from psg4d.cli import main
from psg4d.config import ExclusiveKeys, apply_overrides
from psg4d.data.schema import save_scene_graphs
from psg4d.errors import ConfigError
from psg4d.train.commands import resolve_config
from psg4d.train.stages import load_experiment

# ------------------------------------------------------------------ 1. exclusive overrides


def test_max_steps_override_replaces_the_presets_epochs():
    """The README's line on the full preset (whose stage sets `epochs: 3`), at the config level:
    building the full model needs real weights."""
    assert load_experiment(resolve_config("hoi_full")).stages[0].epochs == 3
    cfg = load_experiment(resolve_config("configs/hoi_full.yaml"), ["stages.0.max_steps=500"])
    assert (cfg.stages[0].max_steps, cfg.stages[0].epochs) == (500, None)
    # the old work-around (clearing epochs by hand) still works
    cfg = load_experiment(resolve_config("hoi_full"), ["stages.0.max_steps=500", "stages.0.epochs=null"])
    assert (cfg.stages[0].max_steps, cfg.stages[0].epochs) == (500, None)


def test_epochs_override_replaces_the_presets_max_steps():
    assert load_experiment(resolve_config("hoi_tiny")).stages[0].max_steps == 1300
    cfg = load_experiment(resolve_config("hoi_tiny"), ["stages.0.epochs=2"])
    assert (cfg.stages[0].max_steps, cfg.stages[0].epochs) == (None, 2.0)
    # the other stage fields and other stages are untouched
    assert cfg.stages[0].trainable == ["encoder", "projector", "llm", "obj_proj", "mask_decoder"]


@pytest.mark.parametrize("overrides", [
    ["stages.0.max_steps=500", "stages.0.epochs=2"],
    ["stages.0.epochs=2", "stages.0.max_steps=500"],
    # a whole stage given on the command line, then the other key of the pair
    ["stages=[{name: s, epochs: 2}]", "stages.0.max_steps=5"],
])
def test_both_keys_of_the_pair_on_one_command_line_is_an_error(overrides):
    with pytest.raises(ConfigError) as e:
        load_experiment(resolve_config("hoi_full"), overrides)
    msg = str(e.value)
    assert "max_steps" in msg and "epochs" in msg and "exclude each other" in msg
    assert all(repr(ov) in msg for ov in overrides[-2:])


def test_apply_overrides_clears_only_the_exclusive_keys_it_is_given():
    data = {"stages": [{"name": "a", "epochs": 3}, {"name": "b", "epochs": 1}], "train": {"epochs": 4}}
    pair = (ExclusiveKeys(section="stages.*", keys=("max_steps", "epochs")),)
    out = apply_overrides(data, ["stages.1.max_steps=7", "train.max_steps=2"], exclusive=pair)
    assert out["stages"] == [{"name": "a", "epochs": 3}, {"name": "b", "epochs": None, "max_steps": 7}]
    assert out["train"] == {"epochs": 4, "max_steps": 2}  # not a section of the table
    assert data["stages"][1] == {"name": "b", "epochs": 1}  # the input is left as it was
    # a null does not replace the other key; without the table nothing is replaced
    assert apply_overrides(data, ["stages.0.max_steps=null"], exclusive=pair)["stages"][0]["epochs"] == 3
    assert apply_overrides(data, ["stages.0.max_steps=5"])["stages"][0] == {"name": "a", "epochs": 3, "max_steps": 5}


def test_train_cli_gets_past_the_config_with_the_readme_override(tmp_path, monkeypatch, capsys):
    """`psg4d train --config configs/hoi_full.yaml --set stages.0.max_steps=500` now stops at the
    first thing a laptop lacks (the weights), not at the stage length."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PSG4D_WEIGHTS", raising=False)
    assert main(["train", "--config", "hoi_full", "--set", "stages.0.max_steps=500"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "weights_path" in err and "max_steps" not in err
    assert main(["train", "--config", "hoi_full", "--set", "stages.0.max_steps=500", "--set", "stages.0.epochs=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "exclude each other" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------ 2. the unmapped-labels warning

ODD = {"cup": "democracy", "person": "algebra"}


@pytest.fixture()
def odd_labels(tmp_path):
    """Predictions equal to the GT but for two object labels outside the vocabulary, each on
    several objects (so distinct labels and objects differ)."""
    rng = np.random.default_rng(11)
    gts = [random_gt(rng, f"vid{i}", n_obj=5) for i in range(4)]
    preds = [perfect_prediction(g) for g in gts]
    n_odd = 0
    for p in preds:
        for o in p.objects:
            if o.category in ODD:
                o.category, n_odd = ODD[o.category], n_odd + 1
    used = {o.category for p in preds for o in p.objects} & set(ODD.values())
    assert used == set(ODD.values()) and n_odd > len(used)
    save_scene_graphs(tmp_path / "gt.jsonl", gts)
    save_scene_graphs(tmp_path / "pred.jsonl", preds)
    # a map for another label: these two stay unmapped
    (tmp_path / "map.json").write_text(json.dumps({"objects": {"beaker": "cup"}}))
    return tmp_path, n_odd


def _unmapped_warning(caplog) -> str:
    lines = [r.getMessage() for r in caplog.records
             if r.levelno == logging.WARNING and "vocabulary" in r.getMessage()]
    assert len(lines) == 1, lines
    return lines[0]


class _UnrelatedEncoder:
    """Stands in for all-MiniLM-L6-v2 (test_labelmap_auto.py runs the real one, seconds to load):
    a random unit vector per text, so no two texts are similar and nothing maps by embedding."""

    def encode(self, texts):
        vecs = [np.random.default_rng(int(hashlib.sha256(t.encode()).hexdigest()[:8], 16)).normal(size=384)
                for t in texts]
        return np.stack([v / np.linalg.norm(v) for v in vecs]).astype(np.float32)


@pytest.mark.parametrize("label_map", [None, "map.json", "auto"])
def test_unmapped_warning_counts_distinct_labels_and_says_what_to_do(odd_labels, caplog, capsys, monkeypatch,
                                                                      label_map):
    d, n_odd = odd_labels
    monkeypatch.setattr("psg4d.eval.embedding.default_encoder", _UnrelatedEncoder)
    args = ["eval", "--pred", str(d / "pred.jsonl"), "--gt", str(d / "gt.jsonl"), "--json"]
    if label_map is not None:
        args += ["--label-map", "auto" if label_map == "auto" else str(d / label_map)]
    with caplog.at_level(logging.WARNING):
        assert main(args) == 0
    msg = _unmapped_warning(caplog)
    assert msg.startswith(f"2 predicted object labels ({n_odd} objects) are not in the ground truth's vocabulary")
    assert msg.endswith("object 'algebra', 'democracy'")
    if label_map is None:
        assert "give a label map" in msg
    else:
        assert "give a label map" not in msg and "the label map given leaves them unmapped" in msg
    um = json.loads(capsys.readouterr().out)["unmapped_labels"]
    assert (um["objects"], um["distinct_objects"], um["predicates"], um["distinct_predicates"]) == (n_odd, 2, 0, 0)


def test_unmapped_table_line_counts_labels_and_objects(odd_labels, capsys):
    d, n_odd = odd_labels
    assert main(["eval", "--pred", str(d / "pred.jsonl"), "--gt", str(d / "gt.jsonl")]) == 0
    table = capsys.readouterr().out
    assert f"unmapped predicted labels: 2 object labels ({n_odd} objects), 0 predicate labels (0 relations)" in table


# ------------------------------------------------------------------ 3. viz --gt DATASET_FOLDER


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    from psg4d.data.readers import open_dataset
    from psg4d.data.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("synth")
    generate(SynthConfig(videos=3, images=0, frames=4, size=32, workers=1, shadows=False), root / "ds", progress=False)
    reader = open_dataset(root / "ds" / "4d")
    # a video with at least two relations, so that one can be left out of the prediction
    vid = next(v for s in reader.splits for v in reader.video_ids(s) if len(reader.read_graph(v).relations) >= 2)
    return root / "ds" / "4d", vid, reader.read_graph(vid)


def _frames(dataset, vid):
    frames = next(p for p in dataset.rglob("align_rgb") if p.parent.name == vid)
    assert len(list(frames.iterdir())) == 4
    return frames


def test_viz_gt_accepts_a_dataset_folder(tiny_dataset, tmp_path, capsys):
    dataset, vid, gt = tiny_dataset
    pred = perfect_prediction(gt)
    missed = pred.relations.pop()  # a GT triplet only the ground truth can put in the report
    pred.save(tmp_path / "pred.json")
    out = tmp_path / "report.html"
    assert main(["viz", str(tmp_path / "pred.json"), "--video", str(_frames(dataset, vid)), "--gt", str(dataset),
                 "--out", str(out)]) == 0, capsys.readouterr().err
    text = out.read_text()
    assert f"{len(gt.relations)} GT triplets" in text
    assert text.count("class='tl-row hit'") == len(pred.relations)
    assert text.count("class='tl-row miss'") == 1
    cats = {o.object_id: o.majority_category() for o in gt.objects}
    assert re.search(re.escape(cats[missed.subject_id]) + r"[^<]*" + re.escape(missed.predicate), text)


def test_viz_gt_folder_without_the_video_is_one_line(tiny_dataset, tmp_path, capsys):
    dataset, vid, gt = tiny_dataset
    pred = copy.deepcopy(gt)
    pred.video_id = "no_such_video"
    pred.save(tmp_path / "pred.json")
    out = tmp_path / "report.html"
    assert main(["viz", str(tmp_path / "pred.json"), "--video", str(_frames(dataset, vid)), "--gt", str(dataset),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert str(dataset) in err and "'no_such_video'" in err
    assert not out.exists()
