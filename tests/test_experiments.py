"""Experiments run end to end at toy size (--quick) and write their results."""

from __future__ import annotations

import json

import torch

from psg4d.cli import main
from psg4d.data.synth import SynthConfig, generate
from psg4d.model.psg4d_llm import PSG4DModel
from test_model_psg4d import tiny_config


def test_predict_experiment_quick(tmp_path, capsys):
    generate(SynthConfig(videos=30, images=0, frames=6, size=32, workers=1, shadows=False), tmp_path / "ds",
             progress=False)
    torch.manual_seed(0)
    PSG4DModel.from_config(tiny_config()).save_pretrained(tmp_path / "ck")
    out = tmp_path / "results"
    args = ["experiment", "predict", "--quick", "--ckpt", str(tmp_path / "ck"), "--data", str(tmp_path / "ds" / "4d")]
    assert main([*args, "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    result = json.loads((out / "predict.json").read_text())
    for key in ("uncached_s_per_video", "cached_s_per_video", "speedup", "contended_over_idle", "threads", "videos"):
        assert printed[key] == result[key]
    assert result["videos"] == 3 and result["threads"] >= 1
    assert result["cached_s_per_video"] > 0 and result["uncached_s_per_video"] > 0
    assert abs(result["speedup"] - result["uncached_s_per_video"] / result["cached_s_per_video"]) < 0.02
    assert all(len(v["cached"]) == 3 for v in result["per_video_s"].values())
    long = result["long_video"]
    assert long["frames"] == 24 and long["peak_rss_mb"] >= long["rss_with_video_mb"] > 0
    assert (out / "predict.svg").read_text().startswith("<svg")
    # a bad output folder is refused before any work, with one line naming it
    (tmp_path / "file").write_text("x")
    assert main([*args, "--out", str(tmp_path / "file")]) == 2
    assert "must be a folder" in capsys.readouterr().err
