"""Experiment ``predict``: per-video prediction time of the tiny 4D-LLM, cached against uncached
candidate scoring, at each thread count, idle and with a competing CPU-bound process; and the
peak memory of predicting a long full-resolution video.

    psg4d experiment predict [--ckpt CKPT --data DIR] [--videos 20] [--quick] [--out runs/experiments/predict]

Without ``--ckpt`` it builds what it measures: the demo's synthetic HOI world (160 videos, so the
test split has >= 20) and the demo's 400-step training run, in ``--run-dir`` (reused when done).

Both scoring paths predict the same videos in one run, alternating which goes first, so machine
noise falls on both. Medians over the videos, after one warm-up video. ``contended_over_idle`` is
the default configuration's (threads adapted to the load) median with one ``while True: pass``
process running, over its idle median. The long video (``--long-frames`` frames of
``--long-size``, a test video's frames upsampled and repeated) is predicted in a fresh process,
whose peak RSS is reported next to its RSS with the video loaded; ``dense_tubes_mb`` is what
holding one full-resolution boolean tube per ``[Obj]`` would have taken.

Writes ``OUT/predict.json`` (``uncached_s_per_video``, ``cached_s_per_video``, ``speedup``,
``contended_over_idle``, ``threads``, ``videos`` and the details) and ``OUT/predict.svg``.
"""

from __future__ import annotations

import json
import logging
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from psg4d.errors import ConfigError
from psg4d.experiments.common import TINY_PRESET, train_or_reuse
from psg4d.train.stages import preset_experiment
from psg4d.experiments.output import check_output_folder, machine_info
from psg4d.utils.io import atomic_write_json
from psg4d.utils.threads import available_cpus

log = logging.getLogger(__name__)

NAME = "predict"
_COMPETITOR = "while True: pass"


@dataclass(kw_only=True)
class PredictSpeedConfig:
    out: Path = Path("runs/experiments/predict")  # the shipped results: --out bench/results
    run_dir: Path = Path("runs/experiments/predict")
    ckpt: Path | None = None
    data: Path | None = None
    split: str = "test"
    videos: int = 20
    long_frames: int = 800
    long_size: tuple[int, int] = (576, 768)  # H, W
    quick: bool = False
    # measured thread counts (capped at the CPUs this process may use)
    threads: list[int] = field(default_factory=lambda: [1, 2])

    def __post_init__(self) -> None:
        if self.videos < 1 or self.long_frames < 1:
            raise ConfigError(f"--videos ({self.videos}) and --long-frames ({self.long_frames}) must be positive")
        if self.quick:
            self.videos, self.long_frames, self.long_size = min(self.videos, 3), 24, (96, 128)


def prepare(cfg: PredictSpeedConfig) -> tuple[Path, Path]:
    """(checkpoint, 4D dataset) to measure: ``--ckpt`` and ``--data``, or else the demo's world and
    training run built in ``RUN_DIR`` (``data``, ``model``; reused when done): ``psg4d demo``'s
    defaults (world seed 0, 16 frames of 64 x 64 pixels, the tiny model's 400 steps) with 160 videos,
    so the test split has >= 20."""
    if cfg.ckpt is not None:
        if cfg.data is None:
            raise ConfigError("--ckpt needs --data (the dataset whose videos are predicted)")
        return cfg.ckpt, cfg.data
    from psg4d.data.synth import SynthConfig, generate_or_reuse

    world, steps, overrides = SynthConfig(videos=160, images=0, frames=16, size=64, seed=0), 400, []
    if cfg.quick:  # a few steps on a small world: a model that runs, not one that is good
        world, steps = SynthConfig(videos=30, images=0, frames=8, size=32, seed=0), 20
        overrides = ["train.log_every=10", "train.save_every=0", "train.val_recall=false"]
    data = generate_or_reuse(world, cfg.run_dir / "data")
    model = cfg.run_dir / "model"
    run = train_or_reuse(preset_experiment(TINY_PRESET, data, model, seed=0, steps=steps, overrides=overrides), model)
    return run.final_dir, data / "4d"


def _time(predictor, video) -> float:
    t = time.perf_counter()
    predictor.predict(video)
    return time.perf_counter() - t


def _side_by_side(model, videos, *, threads: int | None, max_new_tokens: int | None) -> dict[str, list[float]]:
    """Per-video seconds of the cached and the uncached path, alternating which runs first."""
    from psg4d.infer.predictor import Predictor, PredictorConfig

    paths = {name: Predictor(model=model, config=PredictorConfig(cached_scoring=name == "cached", threads=threads,
                                                                 max_new_tokens=max_new_tokens))
             for name in ("cached", "uncached")}
    for p in paths.values():
        p.predict(videos[0])  # warm-up
    times: dict[str, list[float]] = {name: [] for name in paths}
    for i, video in enumerate(videos[1:]):
        order = ("cached", "uncached") if i % 2 == 0 else ("uncached", "cached")
        for name in order:
            times[name].append(_time(paths[name], video))
    return times


def _cached_times(model, videos, *, threads: int | None, max_new_tokens: int | None) -> list[float]:
    from psg4d.infer.predictor import Predictor, PredictorConfig

    p = Predictor(model=model, config=PredictorConfig(threads=threads, max_new_tokens=max_new_tokens))
    p.predict(videos[0])
    return [_time(p, v) for v in videos[1:]]


class _Competitor:
    """One CPU-bound process for the duration of a ``with`` block."""

    def __enter__(self) -> "_Competitor":
        self.proc = subprocess.Popen([sys.executable, "-c", _COMPETITOR])
        time.sleep(0.5)
        return self

    def __exit__(self, *exc) -> None:
        self.proc.kill()
        self.proc.wait()


def long_video_child(ckpt: str, data: str, split: str, frames: int, height: int, width: int,
                     max_new_tokens: int | None) -> dict[str, Any]:
    """In a fresh process: build the long video, predict it, report memory (MiB) and time."""
    import torch.nn.functional as F

    from psg4d.data.readers import open_dataset
    from psg4d.data.schema import Video4D
    from psg4d.infer.predictor import Predictor, PredictorConfig
    from psg4d.model.psg4d_llm import PSG4DModel

    model = PSG4DModel.from_pretrained(ckpt)
    reader = open_dataset(data)
    src = reader.read_video(reader.video_ids(split)[0])
    idx = np.arange(frames) * src.num_frames // frames  # repeat the clip's frames in order
    rgb = F.interpolate(torch.from_numpy(src.rgb).permute(0, 3, 1, 2).float(), size=(height, width), mode="bilinear")
    rgb = rgb.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()  # [T_src, H, W, 3]
    depth = None
    if src.depth is not None:
        d = F.interpolate(torch.from_numpy(src.depth)[:, None], size=(height, width), mode="nearest")[:, 0].numpy()
        depth = np.ascontiguousarray(d[idx], dtype=np.float32)
    video = Video4D(rgb=np.ascontiguousarray(rgb[idx]), depth=depth, video_id="long")
    before = _rss_now_mb()
    t = time.perf_counter()
    graph = Predictor(model=model, config=PredictorConfig(max_new_tokens=max_new_tokens)).predict(video)
    seconds = time.perf_counter() - t
    n_obj_tokens = graph.meta["generated_text"].count("[Obj]") + len(graph.meta.get("tags") or [])
    return {
        "frames": frames, "height": height, "width": width, "seconds": round(seconds, 3),
        "video_mb": round((video.rgb.nbytes + (0 if depth is None else depth.nbytes)) / 2**20, 1),
        "rss_with_video_mb": round(before, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "obj_tokens": n_obj_tokens,
        "dense_tubes_mb": round(n_obj_tokens * frames * height * width / 2**20, 1),
    }


def _rss_now_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _long_video(cfg: PredictSpeedConfig, ckpt: Path, data: Path, max_new_tokens: int | None) -> dict[str, Any]:
    h, w = cfg.long_size
    code = ("import json, sys; from psg4d.experiments.predict_speed import long_video_child; "
            f"print(json.dumps(long_video_child({str(ckpt)!r}, {str(data)!r}, {cfg.split!r}, {cfg.long_frames}, "
            f"{h}, {w}, {max_new_tokens!r})))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"long-video run failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _median(xs: list[float]) -> float:
    return float(np.median(xs)) if xs else float("nan")


def run(cfg: PredictSpeedConfig) -> dict[str, Any]:
    from psg4d.data.readers import open_dataset
    from psg4d.model.psg4d_llm import PSG4DModel
    from psg4d.viz.plots import write_bar_chart

    out_json = check_output_folder(cfg.out, name=NAME, quick=cfg.quick) / f"{NAME}.json"

    ckpt, data = prepare(cfg)
    model = PSG4DModel.from_pretrained(ckpt)
    reader = open_dataset(data)
    ids = reader.video_ids(cfg.split)
    if len(ids) < cfg.videos + 1:
        raise ConfigError(f"{data}: split {cfg.split!r} has {len(ids)} videos; the experiment needs {cfg.videos + 1}"
                          " (one warm-up)")
    videos = [reader.read_video(v) for v in ids[: cfg.videos + 1]]
    max_new = 40 if cfg.quick else None  # an undertrained model writes until its token limit
    cpus = available_cpus()
    thread_counts = sorted({min(t, cpus) for t in cfg.threads})
    log.info("measuring %d videos at threads %s (%d CPUs available)", cfg.videos, thread_counts, cpus)

    idle: dict[int, dict[str, list[float]]] = {}
    for t in thread_counts:
        idle[t] = _side_by_side(model, videos, threads=t, max_new_tokens=max_new)
        log.info("threads %d: cached %.3f s, uncached %.3f s per video", t, _median(idle[t]["cached"]),
                 _median(idle[t]["uncached"]))
    adaptive_idle = _cached_times(model, videos, threads=None, max_new_tokens=max_new)
    with _Competitor():
        adaptive_busy = _cached_times(model, videos, threads=None, max_new_tokens=max_new)
        fixed_busy = {t: _cached_times(model, videos, threads=t, max_new_tokens=max_new) for t in thread_counts}
    long = _long_video(cfg, ckpt, data, max_new)

    best = max(thread_counts)
    result = {
        "uncached_s_per_video": round(_median(idle[best]["uncached"]), 4),
        "cached_s_per_video": round(_median(idle[best]["cached"]), 4),
        "speedup": round(_median(idle[best]["uncached"]) / _median(idle[best]["cached"]), 2),
        "contended_over_idle": round(_median(adaptive_busy) / _median(adaptive_idle), 2),
        "threads": best,
        "videos": cfg.videos,
        "by_threads": {str(t): {
            "cached_s_per_video": round(_median(idle[t]["cached"]), 4),
            "uncached_s_per_video": round(_median(idle[t]["uncached"]), 4),
            "speedup": round(_median(idle[t]["uncached"]) / _median(idle[t]["cached"]), 2),
            "contended_cached_s_per_video": round(_median(fixed_busy[t]), 4),
            "contended_over_idle": round(_median(fixed_busy[t]) / _median(idle[t]["cached"]), 2),
        } for t in thread_counts},
        "adaptive_threads": {"idle_s_per_video": round(_median(adaptive_idle), 4),
                             "contended_s_per_video": round(_median(adaptive_busy), 4)},
        "long_video": long,
        "per_video_s": {f"threads_{t}": {k: [round(x, 4) for x in v] for k, v in idle[t].items()}
                        for t in thread_counts},
        "checkpoint": str(ckpt), "data": str(data), "split": cfg.split, "quick": cfg.quick,
        "machine": machine_info(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
    }
    atomic_write_json(out_json, result, indent=1)
    labels = [f"{t} thread{'s' * (t > 1)}, idle" for t in thread_counts] + [
        f"{t} thread{'s' * (t > 1)}, contended" for t in thread_counts] + ["adaptive, idle", "adaptive, contended"]
    write_bar_chart(
        out_json.with_suffix(".svg"), labels,
        {"cached scoring": [_median(idle[t]["cached"]) for t in thread_counts]
         + [_median(fixed_busy[t]) for t in thread_counts] + [_median(adaptive_idle), _median(adaptive_busy)],
         "uncached scoring": [_median(idle[t]["uncached"]) for t in thread_counts] + [None] * (len(thread_counts) + 2)},
        title=f"psg4d predict: median seconds per video ({cfg.videos} videos)", unit="s", log_scale=True,
    )
    log.info("wrote %s and %s", out_json, out_json.with_suffix(".svg"))
    return result
