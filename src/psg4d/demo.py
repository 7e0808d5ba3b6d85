"""``psg4d demo``: the whole method on the synthetic world, in one command, no downloads.

Steps, each writing into one run folder that the other commands can reuse:

1. ``data/``      — synthesise a small HOI-like world (``psg4d synth``): RGB-D videos in
   the PSG4D-HOI layout (``data/4d``) and 2D scene-graph images (``data/2d``).
2. ``model/``     — train the tiny 4D-LLM (``psg4d train``, stage ``4d_init``);
   ``model/final`` is the checkpoint.
3. ``eval/``      — choose the ranking weights on the validation split
   (``psg4d tune-ranking``: ``model/final/ranking.json``), then predict every test
   video and score both protocols (``psg4d eval``) next to the
   most-frequent-triplet baseline; ``eval/metrics.json``.
4. ``report.html`` — predict one held-out video and render the visual report
   (``psg4d viz``) with its ground truth and the metrics.

Re-running with the same folder reuses finished steps (the data if its settings
match, a finished training run) so a user can resume or extend a demo.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from psg4d.errors import ConfigError
from psg4d.infer.ranking import RANKING_FILE
from psg4d.tune_ranking import tune_checkpoint
from psg4d.utils.io import atomic_write_json, check_output_folder

log = logging.getLogger(__name__)

# Training preset per model choice: an explicit table, so `--model` never guesses a file name.
MODEL_CHOICES: dict[str, str] = {
    "tiny": "hoi_tiny.yaml",  # own tiny encoder + tiny Llama, all from scratch
    "lite0": "hoi_lite0.yaml",  # frozen pretrained EfficientNet-Lite0 branches + tiny Llama
    "smollm2-135m": "hoi_smollm2.yaml",  # tiny encoder + pretrained SmolLM2-135M-Instruct (LoRA)
    "tiny-sam2": "hoi_tiny_sam2.yaml",  # tiny 4D-LLM with SAM2 as SAM2 (sam2_pretrain, then 4d_init)
}


@dataclass(kw_only=True)
class DemoConfig:
    out: Path = Path("runs/demo")
    preset: str = "hoi"
    videos: int = 120
    images: int = 200
    frames: int = 16
    size: int = 64
    seed: int = 0
    model: str = "tiny"
    # None: the training preset's own length (thousands of steps; the demo default is short).
    # `steps` sets every 4D-LLM stage, `pretrain_steps` SAM2's promptable pretraining stage.
    steps: int | None = 400
    pretrain_steps: int | None = 120
    workers: int = 0
    overrides: list[str] = field(default_factory=list)


@dataclass
class DemoResult:
    out: Path
    metrics: dict[str, Any]
    report: Path
    seconds: dict[str, float]


def synthesise(cfg: DemoConfig, data_dir: Path) -> None:
    """The demo's synthetic world in ``data_dir`` (reused when its settings match:
    :func:`psg4d.data.synth.generate_or_reuse`)."""
    from psg4d.data.synth import SynthConfig, generate_or_reuse

    synth_cfg = SynthConfig(
        preset=cfg.preset,
        videos=cfg.videos,
        images=cfg.images,
        frames=cfg.frames,
        size=cfg.size,
        seed=cfg.seed,
        workers=cfg.workers,
    )
    generate_or_reuse(synth_cfg, data_dir)


def train_model(cfg: DemoConfig, data_dir: Path, model_dir: Path):
    """Train the demo's model preset on ``data_dir`` into ``model_dir`` (resumes a finished run)."""
    from psg4d.train.loop import train
    from psg4d.train.stages import preset_experiment

    if cfg.model not in MODEL_CHOICES:
        raise ConfigError(f"unknown --model {cfg.model!r}; choose one of {sorted(MODEL_CHOICES)}")
    exp = preset_experiment(MODEL_CHOICES[cfg.model], data_dir, model_dir, seed=cfg.seed, steps=cfg.steps,
                            pretrain_steps=cfg.pretrain_steps, overrides=cfg.overrides)
    return train(exp, out_dir=model_dir, resume=True)


def evaluate_with_baseline(
    ckpt: Path, data_4d: Path, eval_dir: Path, *, split: str = "test", limit: int | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Predict ``split`` (its first ``limit`` videos) with ``ckpt``, score model and frequency
    baseline under both protocols; writes ``predictions_<split>.jsonl`` and ``metrics.json``.
    ``threads``: torch threads for prediction (None: adapted to the load before every video)."""
    from itertools import islice

    from psg4d.data.readers import open_dataset
    from psg4d.data.schema import iter_scene_graphs, save_scene_graphs
    from psg4d.eval import evaluate
    from psg4d.infer.baselines import FrequencyBaseline
    from psg4d.families import PredictOptions
    from psg4d.infer.predictor_factory import predict_split

    reader = open_dataset(data_4d)
    gts = {g.video_id: g for g in islice(reader.iter_graphs(split), limit)}
    preds_path = eval_dir / f"predictions_{split}.jsonl"
    save_scene_graphs(preds_path, predict_split(ckpt, data_4d, split, limit=limit, progress=True,
                                                options=PredictOptions(threads=threads)))
    baseline = FrequencyBaseline().fit(reader.iter_graphs("train"))
    metrics: dict[str, Any] = {"model": {}, "frequency_baseline": {}}
    for protocol in ("pvsg", "volumetric"):
        metrics["model"][protocol] = evaluate(iter_scene_graphs(preds_path), gts, protocol=protocol)
        metrics["frequency_baseline"][protocol] = evaluate(
            (baseline.predict_like(g) for g in gts.values()), gts, protocol=protocol
        )
    atomic_write_json(eval_dir / "metrics.json", metrics, indent=1)
    return metrics


def metrics_table(metrics: dict[str, Any]) -> str:
    """Rows: method x protocol; columns: R@K then mR@K (percent)."""
    ks = (20, 50, 100)
    head = f"{'method':<20}{'protocol':<12}" + "".join(f"{'R@' + str(k):>8}" for k in ks)
    head += "".join(f"{'mR@' + str(k):>8}" for k in ks)
    lines = [head, "-" * len(head)]
    for method, by_protocol in metrics.items():
        for protocol, r in by_protocol.items():
            row = f"{method:<20}{protocol:<12}" + "".join(f"{r[f'R@{k}']:>8.2f}" for k in ks)
            lines.append(row + "".join(f"{r[f'mR@{k}']:>8.2f}" for k in ks))
    return "\n".join(lines)


def _report(data_4d: Path, eval_dir: Path, out: Path, metrics: dict[str, Any]) -> Path:
    """Report of the first test video, from the prediction the evaluation already made."""
    from psg4d.data.readers import open_dataset
    from psg4d.data.schema import iter_scene_graphs
    from psg4d.viz.report import write_report

    pred = next(iter_scene_graphs(eval_dir / "predictions_test.jsonl"))
    sample = open_dataset(data_4d).read(pred.video_id)
    pred.save(out / f"prediction_{pred.video_id}.json")
    flat = {f"{m}/{p}": {k: v for k, v in r.items() if k.startswith(("R@", "mR@"))} for m, d in metrics.items() for p, r in d.items()}
    return write_report(out / "report.html", pred, sample.video, gt=sample.graph, metrics=flat)


def run_demo(cfg: DemoConfig) -> DemoResult:
    out = Path(cfg.out)
    check_output_folder(out)  # before minutes of work: a file there, or a folder it cannot write
    out.mkdir(parents=True, exist_ok=True)
    data_dir, model_dir, eval_dir = out / "data", out / "model", out / "eval"
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    log.info("[1/4] synthesising the world into %s", data_dir)
    synthesise(cfg, data_dir)
    seconds["synth"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    log.info("[2/4] training the tiny 4D-LLM into %s", model_dir)
    result = train_model(cfg, data_dir, model_dir)
    ckpt = result.final_dir
    seconds["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if not (ckpt / RANKING_FILE).exists():
        log.info("[3/4] choosing the ranking weights on the validation split")
        tune_checkpoint(ckpt, data_dir / "4d", "val")
    seconds["ranking"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    log.info("[3/4] evaluating on the test split")
    metrics = evaluate_with_baseline(ckpt, data_dir / "4d", eval_dir)
    seconds["eval"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    log.info("[4/4] writing the report of a held-out video")
    report = _report(data_dir / "4d", eval_dir, out, metrics)
    seconds["report"] = time.perf_counter() - t0
    atomic_write_json(out / "demo_summary.json", {"seconds": seconds, "checkpoint": str(ckpt), "report": str(report)}, indent=1)
    return DemoResult(out=out, metrics=metrics, report=report, seconds=seconds)


def demo_command(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Run folder (reused if it exists)."),
    videos: int = typer.Option(120, help="Synthetic 4D videos (split 70/15/15)."),
    images: int = typer.Option(200, help="Synthetic 2D scene-graph images."),
    frames: int = typer.Option(16, help="Frames per video."),
    size: int = typer.Option(64, help="Frame size in pixels."),
    steps: int = typer.Option(400, help="Training steps of each 4D-LLM stage (0: the preset's full length)."),
    pretrain_steps: int = typer.Option(120, help="Steps of SAM2's promptable pretraining, --model tiny-sam2"
                                                 " (0: the preset's)."),
    model: str = typer.Option("tiny", help=f"Model preset: {', '.join(MODEL_CHOICES)}."),
    seed: int = typer.Option(0, help="Seed of the world and the training run."),
    workers: int = typer.Option(0, help="Synthesis processes (0: all cores)."),
    set_: list[str] = typer.Option([], "--set", help="Training-config override key=value (repeatable)."),
) -> None:
    """Synthesise a small world, train the tiny 4D-LLM, evaluate it and write a visual report."""
    res = run_demo(
        DemoConfig(
            out=out, videos=videos, images=images, frames=frames, size=size, steps=steps or None,
            pretrain_steps=pretrain_steps or None, model=model,
            seed=seed, workers=workers, overrides=list(set_),
        )
    )
    typer.echo("\n" + metrics_table(res.metrics))
    typer.echo("\ntime: " + ", ".join(f"{k} {v:.0f}s" for k, v in res.seconds.items()))
    typer.echo(f"run folder: {res.out}")
    typer.echo(f"report:     {res.report.resolve()}")
