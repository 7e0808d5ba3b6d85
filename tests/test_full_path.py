"""The paper-size path end to end, in miniature: ``configs/hoi_full_transfer.yaml`` (the `full`
model preset: ImageBind branches, a LLaMA folder in the Hugging Face layout with LoRA, a whole
SAM2.1 checkpoint with its trunk frozen; the five transfer stages on a PSG4D-HOI-layout 4D dataset
and a PSG-layout 2D one) through ``psg4d train`` -> ``psg4d predict`` -> ``psg4d eval``, and its
first stage under a two-process ``torchrun`` (gloo, CPU). Only the sizes the miniature weights
dictate are overridden (:func:`_miniature_weights.full_preset_overrides`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _miniature_weights import full_preset_overrides, imagebind_checkpoint, llama_folder, sam2_checkpoint

from psg4d.cli import main
from psg4d.data.readers import open_dataset
from psg4d.data.synth.generate import SynthConfig, generate

PRESET = "hoi_full_transfer"
STAGES = ["4d_init", "estimator_fit", "pseudo4d_init", "transfer_2d", "finetune_4d"]
TESTS_DIR = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The data root (``psg4d_hoi`` and ``psg`` beside each other, as the preset expects) and the
    miniature weights."""
    base = tmp_path_factory.mktemp("full_path")
    world = base / "world"
    generate(SynthConfig(preset="hoi", videos=6, images=6, frames=4, size=56, seed=2, workers=1, shadows=False),
             world, progress=False)
    root = base / "data"
    root.mkdir()
    (root / "psg4d_hoi").symlink_to(world / "4d", target_is_directory=True)
    (root / "psg").symlink_to(world / "2d", target_is_directory=True)
    reader = open_dataset(root / "psg4d_hoi")
    words = [*reader.object_vocab, *reader.predicate_vocab, "video scene graph objects"]
    weights = base / "weights"
    weights.mkdir()
    files = {"imagebind": imagebind_checkpoint(weights / "imagebind_huge.pth"),
             "sam2": sam2_checkpoint(weights / "sam2.1_hiera_large.pt"),
             "llama": llama_folder(weights / "llama-2-7b-hf", words)}
    return root, files


def _train_args(setup, out: Path, steps: int = 1) -> list[str]:
    root, files = setup
    args = ["train", "--config", PRESET, "--out", str(out)]
    for s in [*full_preset_overrides(files, root), *(f"stages.{k}.max_steps={steps}" for k in range(len(STAGES)))]:
        args += ["--set", s]
    return args


@pytest.fixture(scope="module")
def trained(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("full_run") / "run"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(_train_args(setup, out))
    assert code == 0, buf.getvalue()
    return out, buf.getvalue()


def test_the_five_transfer_stages_train_the_full_model(setup, trained):
    from psg4d.engine.metrics import read_metrics

    out, printed = trained
    _, files = setup
    for name in STAGES:
        assert f"stage {name}: 1 steps" in printed
        recs = read_metrics(out / name / "metrics.jsonl")
        assert recs[0]["step"] == 1 and np.isfinite(recs[0]["loss"])
    assert f"final model: {out / 'finetune_4d' / 'final'}" in printed
    cfg = json.loads((out / "final" / "config.json").read_text())
    model = cfg["model"]
    assert (cfg["kind"], model["preset"], model["encoder"]["backbone"]) == ("psg4d_llm", "full", "imagebind")
    assert model["llm"]["name"] == str(files["llama"]) and model["llm"]["freeze_llm"]
    assert model["mask_decoder"]["kind"] == "sam2" and model["transfer"]["estimators"]
    # the frozen pretrained weights are referenced by path and fingerprint, not copied
    sources = {Path(r["path"]).name for r in cfg["frozen_weights"]}
    assert {"imagebind_huge.pth", "sam2.1_hiera_large.pt"} <= sources
    from safetensors import safe_open

    with safe_open(str(out / "final" / "model.safetensors"), "pt") as f:
        stored = list(f.keys())
    assert not any(k.startswith("mask_decoder.sam.image_encoder.trunk.") for k in stored)
    assert any("lora_" in k for k in stored) and any(k.startswith("transfer.estimators.") or "estimators" in k
                                                     for k in stored)


def test_the_full_model_predicts_a_video_and_eval_scores_its_checkpoint(setup, trained, tmp_path, capsys):
    from PIL import Image

    from psg4d.data.schema import SceneGraph4D

    root, _ = setup
    out, _ = trained
    reader = open_dataset(root / "psg4d_hoi")
    vid = reader.video_ids("test")[0]
    video = reader.read_video(vid)
    frames, depth = tmp_path / vid / "rgb", tmp_path / vid / "depth"
    frames.mkdir(parents=True)
    depth.mkdir()
    for i in range(video.num_frames):
        Image.fromarray(video.rgb[i]).save(frames / f"{i:04d}.png")
        np.save(depth / f"{i:04d}.npy", video.depth[i])
    pred = tmp_path / "pred.json"
    assert main(["predict", "--ckpt", str(out / "final"), "--rgb", str(frames), "--depth", str(depth),
                 "--out", str(pred), "--mode", "direct"]) == 0, capsys.readouterr().err
    graph = SceneGraph4D.load(pred)
    graph.validate(require_tubes=True)
    assert graph.video_id == vid and (graph.num_frames, graph.height, graph.width) == (4, 56, 56)
    assert graph.meta["depth_source"] == "sensor"
    capsys.readouterr()
    assert main(["eval", "--ckpt", str(out / "final"), "--data", str(root / "psg4d_hoi"), "--split", "test",
                 "--json", "--mode", "direct"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["num_videos"] == len(reader.video_ids("test")) and "R@50" in metrics


def test_the_five_stages_train_under_torchrun_on_two_processes(setup, tmp_path):
    """DDP with `find_unused_parameters: false`, as the preset ships: every trainable parameter of
    every stage reaches the loss (SAM2's idle ones are declared unused and never train)."""
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "psg4d.cli", *_train_args(setup, out, steps=2)], capture_output=True, text=True,
                         env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    for name in STAGES:
        meta = json.loads((out / name / "final" / "trainer.json").read_text())
        assert meta["complete"] and meta["step"] == 2, name
        assert res.stdout.count(f"stage {name}: 2 steps") == 1  # rank 0 reports; rank 1 is quiet
    assert "2 ranks" in res.stderr
