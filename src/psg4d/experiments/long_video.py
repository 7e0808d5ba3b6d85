"""Experiment ``long_video``: throughput and peak memory of ``psg4d predict`` on long videos.

    psg4d experiment long_video [--ckpt CKPT --data DIR] [--lengths 100 --lengths 1000 --lengths 10000]
                                [--threads 2] [--quick] [--out runs/experiments/long_video]

What is measured is the CLI's own path for one video file
(:func:`psg4d.infer.video_predict.predict_video`: decoding scaled to the model's
input size, streaming windows of the trained **model** predictor, stitching, the
streamed JSON output), each length in a fresh process so its peak RSS is its own.

The clip: a test video of the dataset played forward and backward (so motion is
continuous), upsampled to ``--height`` x ``--width`` (default 576 x 768, a street
camera) and encoded as an MP4 of each length at 25 fps in ``--run-dir``. Without
``--ckpt`` the model and dataset are the ``predict`` experiment's (the demo's world
and training run, built in ``--run-dir``).

Goals (issue 11): peak RSS of the longest video within 1.2x of the shortest's
(``rss_ratio``), and >= 25 source frames/s at 2 threads for the tiny preset
(``frames_per_s`` of each length). Writes ``OUT/long_video.json`` and
``OUT/long_video.svg`` (peak RSS and frames/s per length).
"""

from __future__ import annotations

import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from psg4d.errors import ConfigError
from psg4d.experiments.output import check_output_folder, machine_info
from psg4d.utils.io import atomic_write_json

log = logging.getLogger(__name__)

NAME = "long_video"
RSS_GOAL = 1.2
FPS_GOAL = 25.0


@dataclass(kw_only=True)
class LongVideoConfig:
    out: Path = Path("runs/experiments/long_video")  # the shipped results: --out bench/results
    run_dir: Path = Path("runs/experiments/long_video")
    ckpt: Path | None = None
    data: Path | None = None
    split: str = "test"
    lengths: list[int] = field(default_factory=lambda: [100, 1000, 10000])
    height: int = 576
    width: int = 768
    threads: int = 2
    max_new_tokens: int | None = None
    quick: bool = False

    def __post_init__(self) -> None:
        if not self.lengths or min(self.lengths) < 2:
            raise ConfigError(f"--lengths must be at least 2 frames each, got {self.lengths}")
        if self.height < 8 or self.width < 8 or self.threads < 1:
            raise ConfigError(f"--height/--width must be >= 8 and --threads >= 1 (got {self.height}, {self.width},"
                              f" {self.threads})")
        if self.quick:
            self.lengths, self.height, self.width = [20, 40, 80], 96, 128
            self.max_new_tokens = self.max_new_tokens or 40  # an undertrained model writes until its limit
        self.lengths = sorted(set(self.lengths))


def _clip_frames(data: Path, split: str, height: int, width: int) -> np.ndarray:
    """One test video's frames forward then backward, at ``height`` x ``width``: uint8 [T, H, W, 3]."""
    from PIL import Image

    from psg4d.data.readers import open_dataset

    reader = open_dataset(data)
    ids = reader.video_ids(split)
    if not ids:
        raise ConfigError(f"{data}: split {split!r} has no videos to build the long clip from")
    src = reader.read_video(ids[0])
    frames = [np.asarray(Image.fromarray(f).resize((width, height), Image.BILINEAR)) for f in src.rgb]
    return np.stack(frames + frames[-2:0:-1] if len(frames) > 2 else frames)


def write_clip(path: Path, frames: np.ndarray, length: int, fps: int = 25) -> Path:
    """``length`` frames cycling through ``frames`` as an MP4 (written one frame at a time)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    with av.open(str(tmp), "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.height, s.width, s.pix_fmt = frames.shape[1], frames.shape[2], "yuv420p"
        s.bit_rate = 4_000_000
        for t in range(length):
            for pkt in s.encode(av.VideoFrame.from_ndarray(frames[t % len(frames)], format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    tmp.replace(path)
    return path


def long_video_child(ckpt: str, video: str, threads: int, max_new_tokens: int | None) -> dict[str, Any]:
    """In a fresh process: predict ``video`` the way ``psg4d predict`` does; time and memory (MiB)."""
    from psg4d.infer.predictor import Predictor, PredictorConfig
    from psg4d.infer.video_predict import ReadOptions, plan_video, predict_video
    from psg4d.model.psg4d_llm import PSG4DModel

    model = PSG4DModel.from_pretrained(ckpt)
    predictor = Predictor(model=model, config=PredictorConfig(threads=threads, max_new_tokens=max_new_tokens))
    opts = ReadOptions()
    plan = plan_video(Path(video), model.config.max_frames, model.config.image_size, opts)
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pred.json"
        t = time.perf_counter()
        res = predict_video(predictor, Path(video), out, opts, plan=plan, progress=False)
        seconds = time.perf_counter() - t
        out_mb = out.stat().st_size / 2**20
    return {
        "frames": res.num_frames, "seconds": round(seconds, 3), "frames_per_s": round(res.num_frames / seconds, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_after_model_mb": round(rss_model, 1), "mode": res.mode, "window": plan.window, "stride": plan.stride,
        "read_size": list(plan.hw), "objects": res.num_objects, "relations": res.num_relations,
        "output_mb": round(out_mb, 2),
    }


def _measure(ckpt: Path, video: Path, threads: int, max_new_tokens: int | None) -> dict[str, Any]:
    code = ("import json; from psg4d.experiments.long_video import long_video_child; "
            f"print(json.dumps(long_video_child({str(ckpt)!r}, {str(video)!r}, {threads}, {max_new_tokens!r})))")
    env_threads = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    import os

    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                         env={**os.environ, **env_threads})
    if res.returncode != 0:
        raise RuntimeError(f"long-video run on {video} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def run(cfg: LongVideoConfig) -> dict[str, Any]:
    from tqdm import tqdm

    from psg4d.experiments.predict_speed import PredictSpeedConfig, prepare
    from psg4d.viz.plots import write_bar_chart

    out_json = check_output_folder(cfg.out, name=NAME, quick=cfg.quick) / f"{NAME}.json"
    ckpt, data = prepare(PredictSpeedConfig(out=cfg.out, run_dir=cfg.run_dir, ckpt=cfg.ckpt, data=cfg.data,
                                            split=cfg.split, quick=cfg.quick))
    frames = _clip_frames(data, cfg.split, cfg.height, cfg.width)
    runs = []
    for n in tqdm(cfg.lengths, desc="long_video", unit="length"):
        clip = cfg.run_dir / "clips" / f"clip_{cfg.height}x{cfg.width}_{n}.mp4"
        if not clip.exists():
            write_clip(clip, frames, n)
        r = _measure(ckpt, clip, cfg.threads, cfg.max_new_tokens)
        log.info("%d frames: %.1f frames/s, peak RSS %.0f MB", n, r["frames_per_s"], r["peak_rss_mb"])
        runs.append(r)
    rss_ratio = runs[-1]["peak_rss_mb"] / runs[0]["peak_rss_mb"]
    result = {
        "lengths": cfg.lengths,
        "frames_per_s": [r["frames_per_s"] for r in runs],
        "peak_rss_mb": [r["peak_rss_mb"] for r in runs],
        "rss_ratio": round(rss_ratio, 3),
        "rss_goal_met": rss_ratio <= RSS_GOAL,
        "fps_goal_met": min(r["frames_per_s"] for r in runs) >= FPS_GOAL,
        "goals": {"rss_ratio_at_most": RSS_GOAL, "frames_per_s_at_least": FPS_GOAL},
        "runs": runs,
        "checkpoint": str(ckpt), "data": str(data), "quick": cfg.quick, "machine": machine_info(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
    }
    atomic_write_json(out_json, result, indent=1)
    labels = [f"{n} frames" for n in cfg.lengths]
    write_bar_chart(
        out_json.with_suffix(".svg"), labels,
        {"peak RSS (MB)": result["peak_rss_mb"], "source frames / s": result["frames_per_s"]},
        title=f"psg4d predict on long {cfg.height}x{cfg.width} videos ({cfg.threads} threads)", unit="",
        log_scale=True,
    )
    log.info("wrote %s and %s", out_json, out_json.with_suffix(".svg"))
    return result
