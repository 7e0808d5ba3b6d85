"""Real processes: a run killed with SIGKILL resumes to the same curve, and a
two-process torchrun (gloo, CPU) trains with disjoint data shards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from test_train_toy import ToyOpener, toy_experiment, toy_factory

from psg4d.engine import checkpoint as ckpt
from psg4d.engine.metrics import read_metrics
from psg4d.train.loop import train

TESTS_DIR = Path(__file__).resolve().parent

# The stages below train encoder, llm and mask_decoder; the toy declares the rest pretrained.
PRETRAINED = ("projector", "obj_proj")

# Runs train() on the toy experiment; the config and the toy's settings are passed as JSON in argv[1].
SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    import torch
    from psg4d.config import from_dict
    from psg4d.train.loop import train
    from psg4d.train.stages import ExperimentConfig
    from test_train_toy import ToyModel, ToyOpener

    args = json.loads(sys.argv[1])
    cfg = from_dict(ExperimentConfig, args["cfg"])
    rank = int(os.environ.get("RANK", "0"))
    built = []

    class Recording(ToyModel):
        def collate(self, samples):
            with open(Path(args["record"]) / f"seen_rank{rank}.txt", "a") as f:
                f.writelines(s.video.video_id + "\\n" for s in samples)
            return super().collate(samples)

    def factory(model_cfg):
        built.append(Recording(sleep_s=args["sleep_s"], pretrained=tuple(args["pretrained"])))
        return built[-1]

    validator = None
    if args.get("recall_validator"):
        # R@K through the collective metric, as the default validator computes it: each rank scores
        # its share of the val videos (their ground truth as the prediction) and the metric sums them
        from psg4d.eval import evaluate
        from psg4d.train.data import build_mixture

        world = int(os.environ.get("WORLD_SIZE", "1"))

        def validator(model, *, stage, step):
            val = build_mixture(cfg.data.val, cfg.data, opener=ToyOpener())
            mine = [val[i].graph for i in range(len(val))][rank::world]
            scores = evaluate(mine, {g.video_id: g for g in mine})
            with open(Path(args["record"]) / f"val_rank{rank}.txt", "a") as f:
                f.write(f"{step} {len(mine)}\\n")
            return {"num_gt_relations": scores["num_gt_relations"], "num_videos": scores["num_videos"]}

    train(cfg, out_dir=args["out"], model_factory=factory, opener=ToyOpener(), validator=validator)
    torch.save(built[-1].state_dict(), Path(args["record"]) / f"weights_rank{rank}.pt")
    """
)


def _cfg_dict(cfg) -> dict:
    from psg4d.config import to_dict

    return to_dict(cfg)


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run_or_kill(cmd: list[str], *, timeout: float) -> str:
    """Run ``cmd`` (a torchrun) to success within ``timeout`` seconds; its output."""
    # own process group, so a hang can be cleaned up with the workers torchrun started
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"torchrun timed out (a hang):\n{output[-3000:]}")
    assert proc.returncode == 0, output[-3000:]
    return output


def _torchrun(script: Path, args: dict) -> str:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), json.dumps(args)]
    return _run_or_kill(cmd, timeout=240)


def _losses(path):
    return [(r["step"], r["loss"]) for r in read_metrics(path) if "loss" in r]


def _kill_at_step(proc: subprocess.Popen, metrics: Path, step: int, *, timeout: float) -> None:
    """SIGKILL ``proc`` once its ``metrics.jsonl`` logs ``step`` (a failure if it exits or times out first)."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if metrics.exists() and metrics.stat().st_size and _losses(metrics)[-1][0] >= step:
                return
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            time.sleep(0.05)
        pytest.fail(f"the run did not reach step {step}")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_sigkilled_run_resumes_to_the_same_loss_curve(tmp_path):
    cfg = toy_experiment(tmp_path, stages=[{"name": "s1", "trainable": ["encoder", "llm", "mask_decoder"],
                                             "max_steps": 60}])
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    rec = tmp_path / "rec"
    rec.mkdir()
    args = {"cfg": _cfg_dict(cfg), "out": str(tmp_path / "killed"), "record": str(rec), "sleep_s": 0.05,
            "pretrained": PRETRAINED}
    proc = subprocess.Popen([sys.executable, str(script), json.dumps(args)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = tmp_path / "killed" / "s1" / "metrics.jsonl"
    _kill_at_step(proc, metrics, 23, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    killed_at = _losses(metrics)[-1][0]
    assert killed_at < 60 and not (tmp_path / "killed" / "s1" / "final").exists()
    assert ckpt.find_last(tmp_path / "killed" / "s1") is not None

    res = train(cfg, out_dir=tmp_path / "killed", model_factory=toy_factory(pretrained=PRETRAINED), opener=ToyOpener())
    assert res.stages[0].resumed_from_step is not None and res.stages[0].resumed_from_step % 5 == 0
    train(cfg, out_dir=tmp_path / "straight", model_factory=toy_factory(pretrained=PRETRAINED), opener=ToyOpener())
    straight = _losses(tmp_path / "straight" / "s1" / "metrics.jsonl")
    resumed = _losses(metrics)
    assert [s for s, _ in resumed] == list(range(1, 61))
    for (_, a), (_, b) in zip(straight, resumed):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-7)


def test_torchrun_two_processes_shard_data_and_write_one_checkpoint(tmp_path):
    cfg = toy_experiment(tmp_path, stages=[{"name": "s1", "trainable": ["encoder", "llm", "mask_decoder"],
                                             "max_steps": 6}], train__save_every=3)
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    rec = tmp_path / "rec"
    rec.mkdir()
    args = {"cfg": _cfg_dict(cfg), "out": str(tmp_path / "ddp"), "record": str(rec), "sleep_s": 0.0,
            "pretrained": PRETRAINED}
    _torchrun(script, args)

    # each rank saw its own half of every epoch (12 videos, 3 batches of 2 per rank per epoch)
    seen = [(rec / f"seen_rank{r}.txt").read_text().split() for r in range(2)]
    train_ids = [f"a_tr{i:03d}" for i in range(12)]
    for epoch in range(2):
        shard = [set(s[6 * epoch : 6 * epoch + 6]) & set(train_ids) for s in seen]
        assert len(shard[0]) == len(shard[1]) == 6 and not shard[0] & shard[1]
        assert shard[0] | shard[1] == set(train_ids)
    # DDP kept the replicas identical
    w0, w1 = (torch.load(rec / f"weights_rank{r}.pt", weights_only=True) for r in range(2))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)

    # one writer: the same checkpoint layout as a single-process run, RNG state of both ranks
    train(cfg, out_dir=tmp_path / "single", model_factory=toy_factory(pretrained=PRETRAINED), opener=ToyOpener())
    layout = {
        name: sorted(p.name for p in (tmp_path / name / "s1").iterdir()) for name in ("ddp", "single")
    }
    assert layout["ddp"] == layout["single"]
    for sub in ("last", "final"):
        assert sorted(os.listdir(tmp_path / "ddp" / "s1" / sub)) == sorted(os.listdir(tmp_path / "single" / "s1" / sub))
    state = ckpt.load_training_state(tmp_path / "ddp" / "s1" / "last")
    assert len(state["rng"]) == 2 and state["data"]["world_size"] == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    losses = _losses(tmp_path / "ddp" / "s1" / "metrics.jsonl")
    assert [s for s, _ in losses] == list(range(1, 7))
    val = [r for r in read_metrics(tmp_path / "ddp" / "s1" / "metrics.jsonl") if "val" in r]
    assert len(val) == 1 and val[0]["val"]["val_loss"] > 0


def test_torchrun_validation_with_a_collective_metric_finishes_and_resumes(tmp_path):
    """Every rank validates: a validator's collectives (R@K summed over the ranks' shares) cannot
    leave a rank waiting at a barrier while another waits in the metric's all-gather."""
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    rec = tmp_path / "rec"
    rec.mkdir()
    for steps in (4, 6):  # the second run resumes from the first one's last checkpoint
        cfg = toy_experiment(tmp_path, stages=[{"name": "s1", "trainable": ["encoder", "llm", "mask_decoder"],
                                                 "max_steps": steps}], train__save_every=2, train__val_every=2)
        args = {"cfg": _cfg_dict(cfg), "out": str(tmp_path / "ddp"), "record": str(rec), "sleep_s": 0.0,
                "pretrained": PRETRAINED, "recall_validator": True}
        _torchrun(script, args)
    val = [r for r in read_metrics(tmp_path / "ddp" / "s1" / "metrics.jsonl") if "val" in r]
    # 3 val videos over 2 ranks, each counted once; every rank validated at every step
    from test_train_toy import ToyReader

    reader = ToyReader(tmp_path / "a")
    relations = sum(len(reader.read_graph(v).relations) for v in reader.video_ids("val"))
    assert [(r["step"], r["val"]["num_videos"], r["val"]["num_gt_relations"]) for r in val] == [
        (2, 3, relations), (4, 3, relations), (6, 3, relations)]
    shares = [[line.split() for line in (rec / f"val_rank{r}.txt").read_text().splitlines()] for r in range(2)]
    assert shares == [[["2", "2"], ["4", "2"], ["6", "2"]], [["2", "1"], ["4", "1"], ["6", "1"]]]
    assert [s for s, _ in _losses(tmp_path / "ddp" / "s1" / "metrics.jsonl")] == list(range(1, 7))
    assert ckpt.load_training_state(tmp_path / "ddp" / "s1" / "last")["step"] == 6


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_readme_multiprocess_training_line_validates_checkpoints_resumes_and_finishes(tmp_path):
    """The README's torchrun line on 1 node x 2 processes, with the shipped preset's validation
    (val loss, diagnostics and R@K of predicted scene graphs), then resumed to a longer schedule."""
    from psg4d.data.readers import open_dataset
    from psg4d.data.synth.generate import SynthConfig, generate

    generate(SynthConfig(preset="hoi", videos=12, images=0, frames=4, size=32, seed=5, workers=1), tmp_path / "w")
    out = tmp_path / "run"
    for steps in (2, 4):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
               "--rdzv_id", "psg4d-test", "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{_free_port()}",
               "-m", "psg4d.cli", "train", "--config", "hoi_tiny", "--out", str(out)]
        for kv in (f"data.root={tmp_path / 'w'}", f"stages.0.max_steps={steps}", "train.val_every=2",
                   "train.save_every=2", "train.val_max_videos=3", "train.num_threads=1", "train.progress=false",
                   "model.max_new_tokens=24"):
            cmd += ["--set", kv]
        output = _run_or_kill(cmd, timeout=400)
    val = [r for r in read_metrics(out / "4d_init" / "metrics.jsonl") if "val" in r]
    assert [r["step"] for r in val] == [2, 4]
    val_videos = min(3, len(open_dataset(tmp_path / "w" / "4d").video_ids("val")))
    assert val_videos >= 2  # both ranks validate a share
    for r in val:  # each val video scored once, whatever the number of ranks
        assert r["val"]["num_videos"] == val_videos and "R@50" in r["val"] and "val_grounding_gap" in r["val"]
    assert "resuming from" in output and (out / "final" / ckpt.MODEL_WEIGHTS).is_file()
    assert ckpt.load_training_state(out / "4d_init" / "last")["step"] == 4


def test_fsdp_on_cpu_is_a_config_error():
    from psg4d.errors import ConfigError
    from psg4d.engine.distributed import DistInfo, wrap_model

    info = DistInfo(rank=0, local_rank=0, world_size=2, device=torch.device("cpu"))
    with pytest.raises(ConfigError, match="fsdp needs CUDA"):
        wrap_model(torch.nn.Linear(2, 2), info, parallel="fsdp", find_unused_parameters=False)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="FSDP over two processes needs two GPUs")
def test_torchrun_fsdp_trains_saves_full_weights_and_resumes(tmp_path):
    from test_train_toy import ToyModel

    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    rec = tmp_path / "rec"
    rec.mkdir()
    for steps in (4, 6):
        cfg = toy_experiment(tmp_path, stages=[{"name": "s1", "trainable": ["encoder", "llm", "mask_decoder"],
                                                 "max_steps": steps}], train__save_every=3, train__parallel="fsdp")
        args = {"cfg": _cfg_dict(cfg), "out": str(tmp_path / "fsdp"), "record": str(rec), "sleep_s": 0.0,
            "pretrained": PRETRAINED}
        _torchrun(script, args)
    losses = _losses(tmp_path / "fsdp" / "s1" / "metrics.jsonl")
    assert [s for s, _ in losses] == list(range(1, 7))
    state = ckpt.load_training_state(tmp_path / "fsdp" / "s1" / "last")
    assert state["step"] == 6 and state["optimizer"]["state"]
    full = ToyModel.from_pretrained(tmp_path / "fsdp" / "s1" / "final")  # gathered, unsharded weights
    assert full.encoder.weight.shape == (16, 6)


def _psg4d(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from psg4d.cli import main; sys.exit(main())", *args]


@pytest.mark.slow
def test_shipped_preset_resumes_bit_identically_under_a_competing_load(tmp_path):
    """`psg4d train --config hoi_tiny`, killed with SIGKILL mid-stage while two other processes keep
    both cores busy, then run again: the final weights equal an uninterrupted run's bit for bit."""
    from safetensors.torch import load_file

    world = tmp_path / "world"
    subprocess.run(_psg4d("synth", "--videos", "8", "--images", "0", "--frames", "8", "--size", "32",
                          "--workers", "1", "--out", str(world)), check=True, env=_env(), capture_output=True)
    sets = [f"data.root={world}", "stages.0.max_steps=10", "train.save_every=3", "train.val_max_videos=1",
            "train.log_every=1"]

    def command(out: Path) -> list[str]:
        return _psg4d("train", "--config", "hoi_tiny", "--out", str(out), *[a for s in sets for a in ("--set", s)])

    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        killed = tmp_path / "killed"
        proc = subprocess.Popen(command(killed), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _kill_at_step(proc, killed / "4d_init" / "metrics.jsonl", 5, timeout=300)
        assert not (killed / "4d_init" / "final").exists()
        assert ckpt.find_last(killed / "4d_init") is not None
        for out in (killed, tmp_path / "straight"):
            run = subprocess.run(command(out), env=_env(), capture_output=True, text=True)
            assert run.returncode == 0, run.stderr[-3000:]
    finally:
        for b in burners:
            b.kill()
            b.wait()
    resumed = load_file(killed / "4d_init" / "final" / "model.safetensors")
    straight = load_file(tmp_path / "straight" / "4d_init" / "final" / "model.safetensors")
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in resumed)


# Runs train_pipeline under torchrun; records each rank's trained weights and the batches it drew.
PIPELINE_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    import torch
    from psg4d.baseline import pipeline
    from psg4d.engine import fit

    args = json.loads(sys.argv[1])
    rank = int(os.environ["RANK"])
    weights, seen, training = {}, [], []
    run = fit.Fit.run

    def recording_run(self, *a, **k):
        training.append(True)
        try:
            return run(self, *a, **k)
        finally:
            training.clear()
            weights[self.name] = {n: v.detach().clone() for n, v in self.wrapped.state_dict().items()}

    forward = pipeline.QuerySegmenter.forward

    def recording_forward(self, rgb, depth=None):
        if training:
            seen.append(float(rgb.double().sum()))
        return forward(self, rgb, depth)

    fit.Fit.run = recording_run
    pipeline.QuerySegmenter.forward = recording_forward
    from psg4d.baseline.config import load_pipeline_config
    cfg = load_pipeline_config(args["preset"], args["sets"])
    pipeline.train_pipeline(cfg, out_dir=Path(args["out"]))
    torch.save({"weights": weights, "seen": seen}, Path(args["record"]) / f"rank{rank}.pt")
    """
)


def test_torchrun_pipeline_trains_data_parallel_and_rank_zero_writes(tmp_path):
    """The pipeline baseline under torchrun goes through the engine's rank gating: each rank draws
    its own batches, the averaged gradients keep the replicas identical, one writer."""
    from test_baseline_pipeline import PRESET, _overrides

    from psg4d.baseline.predict import PipelinePredictor
    from psg4d.data.synth.generate import SynthConfig, generate

    world = tmp_path / "world"
    generate(SynthConfig(preset="hoi", videos=8, images=0, frames=4, size=32, seed=3, workers=1), world)
    sets = _overrides(world, **{"segment_train.steps": 6, "segment_train.save_every": 3,
                                "segment_train.log_every": 1, "data.val_videos": 1})
    script = tmp_path / "run.py"
    script.write_text(PIPELINE_SCRIPT)
    rec = tmp_path / "rec"
    rec.mkdir()
    out = tmp_path / "ddp"
    _torchrun(script, {"preset": str(PRESET), "sets": sets, "out": str(out), "record": str(rec)})

    r0, r1 = (torch.load(rec / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert len(r0["seen"]) == len(r1["seen"]) == 6 and r0["seen"] != r1["seen"]
    for name in ("segmenter", "relation"):
        if name in r0["weights"]:
            assert all(torch.equal(r0["weights"][name][k], r1["weights"][name][k]) for k in r0["weights"][name])
    assert "segmenter" in r0["weights"]
    # one writer: one metrics record per step, both ranks' RNG states in the resumable checkpoint
    assert [r["step"] for r in read_metrics(out / "segment" / "metrics.jsonl") if "loss" in r] == list(range(1, 7))
    state = ckpt.load_training_state(out / "segment" / "last")
    assert len(state["rng"]) == 2 and state["data"]["world_size"] == 2 and state["step"] == 6
    assert (out / "val.json").is_file() and json.loads((out / "stages.json").read_text())
    PipelinePredictor.from_pretrained(out / "final")
