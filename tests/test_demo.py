"""The README's main command, shortened: every artefact exists and is valid."""

import json

from psg4d.cli import main
from psg4d.data.readers import open_dataset
from psg4d.data.schema import SceneGraph4D, iter_scene_graphs
from psg4d.model.psg4d_llm import PSG4DModel


def test_short_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--videos", "8", "--images", "4", "--frames", "4", "--size", "32",
            "--steps", "2", "--workers", "1", "--set", "train.val_max_videos=1", "--set", "train.num_threads=1"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "frequency_baseline" in printed and "R@50" in printed and "report.html" in printed

    reader = open_dataset(out / "data" / "4d")
    assert set(reader.splits) == {"train", "val", "test"}
    assert open_dataset(out / "data" / "2d").format_name == "psg"

    model = PSG4DModel.from_pretrained(out / "model" / "final")
    assert model.config.object_vocab  # filled from the data

    test_ids = reader.video_ids("test")
    preds = list(iter_scene_graphs(out / "eval" / "predictions_test.jsonl"))
    assert [p.video_id for p in preds] == test_ids
    # the ranking weights were chosen on the validation split, and the predictions were ranked with them
    ranking = json.loads((out / "model" / "final" / "ranking.json").read_text())
    assert ranking["split"] == "val" and ranking["videos"] == len(reader.video_ids("val"))
    assert len(ranking["tried"]) == 30
    assert all(p.meta["ranking"]["chosen_on"] == ranking["chosen_on"] for p in preds)

    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    for method in ("model", "frequency_baseline"):
        for protocol in ("pvsg", "volumetric"):
            r = metrics[method][protocol]
            assert r["num_videos"] == len(test_ids)
            assert all(0.0 <= r[f"{m}@{k}"] <= 100.0 for m in ("R", "mR") for k in (20, 50, 100))

    pred = SceneGraph4D.load(out / f"prediction_{test_ids[0]}.json")
    assert pred.video_id == test_ids[0]
    html = (out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "data:image/" in html
    assert not any(f'{attr}="http' in html or f"{attr}='http" in html for attr in ("src", "href"))

    # a second run reuses the world and the finished training
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["checkpoint"].endswith("final") or "final" in summary["checkpoint"]
    assert main(args) == 0
