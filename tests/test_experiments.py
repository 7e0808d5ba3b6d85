"""Experiments run end to end at toy size (--quick) and write their results."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from psg4d.cli import main
from psg4d.data.synth import SynthConfig, generate
from psg4d.model.psg4d_llm import PSG4DModel
from test_model_psg4d import tiny_config

REPO = Path(__file__).resolve().parent.parent


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


def test_long_video_experiment_quick(tmp_path, capsys, monkeypatch):
    generate(SynthConfig(videos=6, images=0, frames=6, size=32, workers=1, shadows=False), tmp_path / "ds",
             progress=False)
    torch.manual_seed(0)
    PSG4DModel.from_config(tiny_config()).save_pretrained(tmp_path / "ck")
    args = ["experiment", "long_video", "--quick", "--ckpt", str(tmp_path / "ck"), "--data",
            str(tmp_path / "ds" / "4d"), "--run-dir", str(tmp_path / "run"), "--threads", "1"]
    # a quick run never replaces a full run's results, such as the shipped ones BENCHMARKS.md cites
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "long_video.json").write_bytes((REPO / "bench" / "results" / "long_video.json").read_bytes())
    assert main([*args, "--out", str(shipped)]) == 2
    assert "long_video.json: holds the results of a full run" in capsys.readouterr().err
    assert (shipped / "long_video.json").read_bytes() == (REPO / "bench" / "results" / "long_video.json").read_bytes()
    # by default the results go under runs/experiments/NAME of the current folder, never to bench/results
    monkeypatch.chdir(tmp_path)
    assert main(args) == 0
    out = tmp_path / "runs" / "experiments" / "long_video"
    printed = json.loads(capsys.readouterr().out)
    result = json.loads((out / "long_video.json").read_text())
    assert printed["lengths"] == result["lengths"] == [20, 40, 80]
    assert [r["frames"] for r in result["runs"]] == [20, 40, 80]  # every source frame predicted
    for r in result["runs"]:
        assert r["mode"] == "streaming" and r["window"] == 16 and r["read_size"] == [32, 43]
        assert r["frames_per_s"] > 0 and r["peak_rss_mb"] >= r["rss_after_model_mb"] > 0
    assert result["rss_ratio"] == round(result["runs"][-1]["peak_rss_mb"] / result["runs"][0]["peak_rss_mb"], 3)
    assert isinstance(result["rss_goal_met"], bool) and isinstance(result["fps_goal_met"], bool)
    assert (out / "long_video.svg").read_text().startswith("<svg")
    assert sorted(p.name for p in (tmp_path / "run" / "clips").iterdir()) == [
        f"clip_96x128_{n}.mp4" for n in (20, 40, 80)]


def test_transfer_experiment_quick(tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["experiment", "transfer", "--quick", "--out", str(out), "--run-dir", str(tmp_path / "run")]) == 0
    records = json.loads((out / "transfer.json").read_text())
    arms = {(r["arm"], r["input"]) for r in records}
    assert arms == {("transfer", "rgbd"), ("transfer", "rgb"), ("4d_only", "rgbd"), ("4d_only", "rgb"),
                    ("4d_only_equal_steps", "rgbd")}
    for r in records:
        assert r["num_4d_videos"] == 4 and set(r["metrics"]) == {"pvsg", "volumetric"}
        assert {"R@20", "R@50", "R@100", "mR@50"} <= set(r["metrics"]["pvsg"]) and r["wall_s"] >= 0
        assert r["num_2d_images"] == (12 if r["arm"] == "transfer" else 0)
    steps = {r["arm"]: r["steps"] for r in records}
    assert steps["transfer"] == steps["4d_only_equal_steps"] == 10 and steps["4d_only"] == 2
    # RGB-only input: the transfer model estimates depth, the 4D-only one fuses RGB alone
    source = {(r["arm"], r["input"]): r["depth_source"] for r in records}
    assert source[("transfer", "rgb")] == "estimated" and source[("4d_only", "rgb")] == "none"
    assert source[("transfer", "rgbd")] == "sensor"
    features = json.loads((out / "transfer_features.json").read_text())
    assert set(features["similarity"]) == {"estimator_fit", "pseudo4d_init"}
    assert (out / "transfer_features.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ssim_and_held_out_relations():
    from psg4d.data.schema import ObjectTrack, Relation, SceneGraph4D
    from psg4d.experiments.transfer import held_out_graphs, ssim_maps

    g = torch.Generator().manual_seed(0)
    maps = torch.randn(5, 8, 8, generator=g)
    assert torch.allclose(ssim_maps(maps, maps), torch.ones(5), atol=1e-5)  # identical maps
    noisy = float(ssim_maps(maps + 0.5 * torch.randn(5, 8, 8, generator=g), maps).mean())
    assert 0.3 < noisy < 0.95  # the same structure under noise
    assert abs(float(ssim_maps(torch.randn(5, 8, 8, generator=g), maps).mean())) < 0.3  # unrelated
    graph = SceneGraph4D("v", 4, 8, 8, [ObjectTrack(0, "hand"), ObjectTrack(1, "lime"), ObjectTrack(2, "mug")],
                         [Relation(0, 1, "holding", [(0, 3)]), Relation(0, 2, "touching", [(1, 2)]),
                          Relation(1, 2, "next to", [(0, 0)])])
    kept = held_out_graphs([graph], {"lime"})[0]
    assert [(r.subject_id, r.object_id) for r in kept.relations] == [(0, 1), (1, 2)]
    assert len(graph.relations) == 3  # the ground truth itself is untouched


def test_chain_experiment_quick(tmp_path):
    out = tmp_path / "results"
    run = tmp_path / "run"
    assert main(["experiment", "chain", "--quick", "--out", str(out), "--run-dir", str(run)]) == 0
    result = json.loads((out / "chain.json").read_text())
    assert result["judged_on_world_seed"] == 29 and result["training_seeds"] == [0]
    assert result["design_world_seed"] is None  # a judged run (--design would name its design world here)
    assert len(result["naming_vocabulary"]) >= 20 and result["naming_chance"] == round(1 / len(result["naming_vocabulary"]), 4)
    runs = result["runs"]
    arms = [(r["llm"], r["mode"], r["naming"]) for r in runs]
    assert arms == [(llm, mode, naming) for llm in ("tiny", "smollm2-135m")
                    for mode, naming in (("direct", None), ("chain", "free"), ("chain", "vocabulary"),
                                         ("chain", "vocabulary, no unknown objects"), ("chain", "vocabulary, margin 0"))]
    for r in runs:
        assert set(r["metrics"]) == {"pvsg", "volumetric"} and {"R@20", "R@50", "R@100", "mR@50"} <= set(
            r["metrics"]["pvsg"])
        assert {"zR@50_novel", "recall@50_seen_only_in_2d", "mapper_accuracy", "wall_s", "turns_at_limit"} <= set(r)
        assert set(r["novel_named_as"]) == set(result["novel_categories"]) == {"apple", "globe", "jar", "phone"}
        # ranking weights (each mode its own), the unknown-object margin and --mode auto: chosen by
        # psg4d tune-ranking on the world's validation split, beside the checkpoint
        chosen = r["chosen_on_validation"]
        assert chosen["chosen_on"].startswith("val split of world 29") and chosen["auto_mode"] in ("direct", "chain")
        assert set(chosen["direct"]) == set(chosen["chain"]) == {"quality", "presence"}
        gate = chosen["unknown_margin"]
        assert gate["margin"] >= 0 and gate["keep"] == 0.95
        ranking = json.loads((Path(r["checkpoint"]) / "ranking.json").read_text())
        assert ranking["split"] == "val" and ranking["unknown_margin"] == gate
        if r["naming"] == "vocabulary":  # the language probe names every novel category over the whole vocabulary
            assert set(r["naming_probe"]["named"]) == set(result["novel_categories"])
            assert set(r["naming_probe"]["named"].values()) <= set(result["naming_vocabulary"])
    # one summary row per arm, mean ± std over the seeds
    assert [(s["llm"], s["mode"], s["naming"]) for s in result["summary"]] == arms
    assert result["summary"][0]["metrics.pvsg.R@50"]["mean"] == runs[0]["metrics"]["pvsg"]["R@50"]
    # novel categories reach no training data: neither the 4D training videos nor the 2D images
    from psg4d.data.readers import open_dataset

    for part, split in (("4d", "train"), ("2d", "train")):
        reader = open_dataset(run / "world29" / part)
        seen = {o.category for v in reader.video_ids(split) for o in reader.read_graph(v, with_masks=False).objects}
        assert not seen & set(result["novel_categories"]), part
    assert (out / "chain.svg").read_text().startswith("<svg")
    # a rerun reuses the world, the trained models and what tune-ranking chose for them
    chosen = Path(runs[0]["checkpoint"]) / "ranking.json"
    before = chosen.stat().st_mtime_ns
    assert main(["experiment", "chain", "--quick", "--out", str(out), "--run-dir", str(run), "--llms", "tiny"]) == 0
    assert chosen.stat().st_mtime_ns == before
    for r in runs:  # how many fields the attribute head read right on the chain's matched objects
        if r["mode"] == "chain":
            read, novel = r["attributes_read_right"], r["attributes_read_right_novel"]
            assert set(read) == set(novel) == {"size", "colour", "shape", "pattern", "pattern colour", "all", "objects"}
            assert read["objects"] == 0 or all(0 <= read[f] <= 100 for f in read if f != "objects")
            assert novel["objects"] <= read["objects"]
    # the chain's model measures size and shape from depth (the default attribute_form): a form reader trained
    from safetensors import safe_open

    ckpt_dir = Path(runs[0]["checkpoint"])
    assert json.loads((ckpt_dir / "config.json").read_text())["model"]["attribute_form"] == "geometry"
    with safe_open(str(ckpt_dir / "model.safetensors"), "pt") as f:
        assert any(k.startswith("attribute_head.form.") for k in f.keys())
    # the colour_reading experiment reads a trained checkpoint's own head and maps, every field scored
    ckpt_out = tmp_path / "colour"
    assert main(["experiment", "colour_reading", "--quick", "--ckpt", runs[0]["checkpoint"],
                 "--data", str(run / "world29" / "4d"), "--out", str(ckpt_out)]) == 0
    got = json.loads((ckpt_out / "colour_reading_checkpoint.json").read_text())
    assert got["checkpoint"] == runs[0]["checkpoint"] and got["judged"] is False
    assert got["training_seeds"] == [runs[0]["seed"]]  # the seed of the run that trained the checkpoint
    assert {(a["reading"], a["tube"]) for a in got["arms"]} == {  # with the form reader: geometry, and both added
        (r, t) for r in ("contrast", "sum", "geometry", "both") for t in ("true", "cells", "widened")}
    for a in got["arms"]:
        assert a["objects"] > 0 and {"size", "colour", "shape", "pattern", "pattern_colour", "all"} <= set(a)
        assert a["all"] <= min(a["size"], a["colour"], a["shape"], a["pattern"], a["pattern_colour"])
    assert got["chosen"]["reading"] in ("contrast", "sum", "geometry", "both")


def test_naming_experiment_quick(tmp_path):
    out = tmp_path / "results"
    assert main(["experiment", "naming", "--quick", "--out", str(out)]) == 0
    result = json.loads((out / "naming.json").read_text())
    assert list(result["llms"]) == ["tiny"] and len(result["vocabulary"]) >= 20
    assert result["chance"] == round(1 / len(result["vocabulary"]), 4)
    assert result["judged_on_world_seed"] is None and result["training_seeds"] == []  # no world, no training
    assert "the validation group (leave one out)" in result["defaults_chosen_on"].values()
    assert set(result["llms"]["tiny"]) == {"calibrated", "raw"}  # both scorings, side by side
    assert result["chosen_on_validation"]["llm"] == "tiny"
    assert result["chosen_on_validation"]["scoring"] in ("calibrated", "raw")
    tiny = result["llms"]["tiny"]["calibrated"]
    groups = tiny["groups"]
    assert set(groups["novel"]["named"]) == {"apple", "globe", "jar", "phone"}
    assert set(groups["seen_only_in_2d"]["named"]) == {"bowling pin", "lime", "thermos", "toy car"}
    for probe in groups.values():  # every answer is a name of the whole vocabulary, the described class among them
        assert set(probe["named"].values()) <= set(result["vocabulary"])
        assert all(c in result["vocabulary"] for c in probe["named"])
        assert probe["descriptions"]["apple" if "apple" in probe["named"] else "lime"].endswith("sphere")
    # no shot names a held-out category (the answer is not given away in the prompt)
    assert not set(result["shots_from"]) & (set(groups["novel"]["named"]) | set(groups["seen_only_in_2d"]["named"]))
    # the validation group is the categories training shows, each named with the others as shots
    validation = tiny["validation_leave_one_out"]
    assert set(validation["named"]) == set(result["shots_from"]) and len(result["shots_from"]) >= 10
    assert set(validation["named"].values()) <= set(result["vocabulary"])
    assert (out / "naming.svg").read_text().startswith("<svg")


def test_chain_experiment_refuses_a_design_world(tmp_path, capsys):
    assert main(["experiment", "chain", "--world-seed", "1", "--out", str(tmp_path / "o"),
                 "--run-dir", str(tmp_path / "r")]) == 2
    assert "designed the recipes" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    # --design is the way to run it on a design world, and only there
    assert main(["experiment", "chain", "--design", "--world-seed", "29", "--out", str(tmp_path / "o"),
                 "--run-dir", str(tmp_path / "r")]) == 2
    assert "--design runs on a design world" in capsys.readouterr().err
    from psg4d.experiments.chain import ChainExperimentConfig

    assert ChainExperimentConfig(design=True, world_seed=1).world_seed == 1
    assert main(["experiment", "chain", "--attribute-form", "guess", "--out", str(tmp_path / "o"),
                 "--run-dir", str(tmp_path / "r")]) == 2
    assert "--attribute-form must be 'geometry', 'map' or 'both'" in capsys.readouterr().err


def test_colour_reading_experiment_quick(tmp_path):
    out = tmp_path / "results"
    assert main(["experiment", "colour_reading", "--quick", "--out", str(out), "--run-dir", str(tmp_path / "r")]) == 0
    result = json.loads((out / "colour_reading.json").read_text())
    assert result["judged"] is False and result["design_world_seed"] == 1 and result["training_seeds"] == [0]
    arms = {(a["steps"], a["lr"], a["reading"], a["tube"]) for a in result["arms"]}
    assert arms == {(s, 0.001, r, t) for s in (2, 4) for r in ("contrast", "sum") for t in ("true", "cells", "widened")}
    for a in result["arms"]:
        assert a["objects"] > 0 and 0 <= a["colour"] <= 100 and 0 <= a["pattern_colour"] <= 100
    chosen = result["chosen"]
    mean = sum(a["colour"] for a in result["arms"]
               if (a["steps"], a["lr"], a["reading"]) == (chosen["steps"], chosen["lr"], chosen["reading"])) / 3
    assert chosen["mean_colour"] == round(mean, 2)
    assert (out / "colour_reading.svg").read_text().startswith("<svg")


def test_colour_reading_refuses_a_judged_world(tmp_path, capsys):
    assert main(["experiment", "colour_reading", "--world-seed", "29", "--out", str(tmp_path / "o"),
                 "--run-dir", str(tmp_path / "r")]) == 2
    assert "design world" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert main(["experiment", "colour_reading", "--ckpt", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "--ckpt and --data go together" in capsys.readouterr().err


def test_tube_variants_by_hand():
    from psg4d.experiments.colour_reading import tube_variants

    m = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    m[0, 0, 4:7, 4:6] = True  # 6 pixels in the cell (1, 1) of 4x4-pixel cells: 6 of 16, under half
    m[0, 0, 8:12, 8:12] = True  # the whole cell (2, 2)
    got = tube_variants(m)
    assert torch.equal(got["true"], m)
    cells = torch.zeros(16, 16, dtype=torch.bool)
    cells[8:12, 8:12] = True  # only the cell at least half covered
    assert torch.equal(got["cells"][0, 0], cells)
    wide = torch.zeros(16, 16, dtype=torch.bool)
    wide[4:16, 4:16] = True  # widened by one cell each way (clipped at the frame)
    assert torch.equal(got["widened"][0, 0], wide)


def test_compare_experiment_quick(tmp_path):
    out = tmp_path / "results"
    run = tmp_path / "run"
    assert main(["experiment", "compare", "--quick", "--out", str(out), "--run-dir", str(run)]) == 0
    records = json.loads((out / "compare.json").read_text())
    arms = [(r["preset"], r["method"]) for r in records]
    assert arms == [("hoi", m) for m in ("pipeline", "pipeline_no_depth", "pipeline_no_temporal", "4d_llm",
                                         "4d_llm_transfer")] + [("gta", m) for m in (
        "pipeline", "pipeline_no_depth", "pipeline_no_temporal", "4d_llm")]  # GTA has no 2D images to transfer
    for r in records:
        assert set(r["metrics"]) == {"pvsg", "volumetric"} and {"R@20", "R@50", "R@100", "mR@50"} <= set(
            r["metrics"]["pvsg"])
        assert {"mean_tube_viou", "panoptic_quality", "train_wall_s", "predict_s_per_video"} <= set(r)
        assert r["mean_tube_viou"] is None or 0.0 <= r["mean_tube_viou"] <= 1.0
        assert (run / "predictions" / f"{r['preset']}_{r['method']}.jsonl").is_file()
        assert r["train_wall_s"] > 0 and r["predict_s_per_video"] > 0 and r["test_videos"] == 3
    # the ablations are what they say: no depth backbone; the pipeline's segmenter, no temporal transformer
    from psg4d.baseline.checkpoint import read_config

    by = {(r["preset"], r["method"]): read_config(r["checkpoint"]) for r in records if r["method"].startswith("pipe")}
    assert by[("hoi", "pipeline_no_depth")]["segmenter"]["use_depth"] is False
    assert by[("hoi", "pipeline_no_temporal")]["relation"]["use_temporal"] is False
    assert by[("hoi", "pipeline_no_temporal")]["segmenter"] == by[("hoi", "pipeline")]["segmenter"]
    assert (out / "compare.svg").read_text().startswith("<svg")


def test_reading_experiment_quick(tmp_path, capsys):
    out, run = tmp_path / "results", tmp_path / "run"
    assert main(["experiment", "reading", "--quick", "--out", str(out), "--run-dir", str(run)]) == 0
    result = json.loads((out / "reading.json").read_text())
    assert result["judged_on_world_seed"] == 23 and 23 not in result["design_worlds"]
    assert [(r["arm"], r["seed"]) for r in result["runs"]] == [("plain", 0), ("time", 0), ("region", 0)]
    for r in result["runs"]:
        assert {"text_only", "ranked"} <= set(r) and {"pvsg_R@50", "pvsg_mR@50", "volumetric_R@50"} <= set(r["ranked"])
        assert r["ranking"]["chosen_on"].startswith("val split")  # chosen on validation, never the test split
        assert r["grounding_videos"] == 3 and -1e9 < r["grounding_gap"] < 1e9
    # the arms are what they say
    from psg4d.model.psg4d_llm import PSG4DModel

    cfgs = {r["arm"]: PSG4DModel.from_pretrained(r["checkpoint"]).config for r in result["runs"]}
    assert (cfgs["plain"].encoder.frame_grid, cfgs["plain"].time_reversal) == (0, 0.0)
    assert (cfgs["time"].encoder.frame_grid, cfgs["time"].time_reversal) == (2, 0.5)
    assert cfgs["region"].region.enabled and not cfgs["plain"].region.enabled and not cfgs["time"].region.enabled
    assert set(result["summary"]["time"]) >= {"ranked.pvsg_R@50", "grounding_top1", "reversed_accuracy"}
    assert (out / "reading.svg").read_text().startswith("<svg")
    assert "pvsg R@50" in capsys.readouterr().out
    # a second run reuses each recorded run (its record is not rewritten); other settings are new runs
    records = sorted(run.glob("*_seed0/record.json"))
    assert len(records) == 3
    stamps = [p.stat().st_mtime_ns for p in records]
    assert main(["experiment", "reading", "--quick", "--out", str(tmp_path / "again"), "--run-dir", str(run),
                 "--arms", "region"]) == 0
    again = json.loads((tmp_path / "again" / "reading.json").read_text())
    assert again["runs"] == [r for r in result["runs"] if r["arm"] == "region"]
    assert [p.stat().st_mtime_ns for p in records] == stamps
    # judged numbers never come from a design world
    assert main(["experiment", "reading", "--out", str(tmp_path / "o2"), "--world-seed", "11"]) == 2


def test_form_reading_experiment_quick(tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["experiment", "form_reading", "--quick", "--out", str(out), "--run-dir", str(tmp_path / "r"),
                 "--above", "0", "--above", "0.05"]) == 0
    result = json.loads((out / "form_reading.json").read_text())
    assert result["judged"] is False and result["design_world_seed"] == 1 and result["training_seeds"] == [0, 1]
    assert [(a["above"], a["hidden"], a["lr"]) for a in result["arms"]] == [(0.0, 32, 0.003), (0.05, 32, 0.003)]
    for a in result["arms"]:
        v, n = a["validation"], a["novel_test"]
        assert v["objects"] > 0 and 0 <= v["both"] <= min(v["size"], v["shape"]) <= 100
        assert n["objects"] == 0 or n["both"] <= min(n["size"], n["shape"])
        # the scores are the training seeds' means
        assert [r["seed"] for r in a["seeds"]] == [0, 1]
        assert v["both"] == round(sum(r["validation"]["both"] for r in a["seeds"]) / 2, 2) and v["both_std"] >= 0
    best = max(a["validation"]["both"] for a in result["arms"])
    chosen = result["chosen"]
    assert chosen["validation_both"] == best
    assert [a for a in result["arms"] if a["validation"]["both"] == best][0]["above"] == chosen["above"]
    assert (out / "form_reading.svg").read_text().startswith("<svg")
    # it chooses defaults, so never on a judged world; bad settings are one line
    assert main(["experiment", "form_reading", "--world-seed", "29", "--out", str(tmp_path / "o"),
                 "--run-dir", str(tmp_path / "r2")]) == 2
    assert "design world" in capsys.readouterr().err
    assert main(["experiment", "form_reading", "--quick", "--above", "-1", "--out", str(tmp_path / "o"),
                 "--run-dir", str(tmp_path / "r2")]) == 2
    assert "--above must be metres" in capsys.readouterr().err
