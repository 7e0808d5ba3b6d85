"""``psg4d predict``: a trained checkpoint + an RGB(-D) video -> a ranked 4D scene graph (JSON).

``--rgb`` is a folder of frames, a video file, or a folder of video files (batch
mode: ``--out`` is then a folder and each video gives ``OUT/<name>.json``).
Mask tubes are stored in the JSON as per-frame COCO RLEs; ``--report`` adds the
visual HTML report next to each prediction.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from psg4d.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def _video_files(folder: Path) -> list[Path]:
    from psg4d.data.video_io import VIDEO_EXTS

    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTS)


def predict_command(
    ckpt: Path = typer.Option(..., "--ckpt", help="Checkpoint folder written by training (save_pretrained)."),
    rgb: Path = typer.Option(..., "--rgb", help="Folder of RGB frames, a video file, or a folder of video files."),
    out: Path = typer.Option(..., "--out", help="Output scene-graph JSON (a folder in batch mode)."),
    depth: Optional[Path] = typer.Option(None, "--depth", help="Folder of depth frames (.npy metres or 16-bit png)."),
    depth_scale: float = typer.Option(1000.0, "--depth-scale", help="16-bit depth png units per metre."),
    fps: Optional[float] = typer.Option(None, "--fps", help="Resample the video to this frame rate first."),
    max_frames: Optional[int] = typer.Option(
        None, "--max-frames", help="Read at most this many frames (default: the model's max_frames)."
    ),
    size: Optional[int] = typer.Option(None, "--size", help="Resize frames so the shorter side is SIZE."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Generation length limit."),
    candidates: int = typer.Option(300, "--candidates", help="Keep at most this many ranked relations."),
    report: bool = typer.Option(False, "--report", help="Also write the HTML report next to each prediction."),
    threads: Optional[int] = typer.Option(
        None, "--threads", help="torch threads (default: the CPUs this process may use that others leave free)."
    ),
) -> None:
    """Predict the 4D scene graph of one video (or a folder of videos) and write it as JSON."""
    from tqdm import tqdm

    from psg4d.infer.predictor import Predictor, PredictorConfig
    from psg4d.data.video_io import load_video
    from psg4d.model.psg4d_llm import PSG4DModel

    batch = rgb.is_dir() and bool(_video_files(rgb))
    if batch and depth is not None:
        raise DataError(depth, "--depth is for a single video; batch mode over a folder of videos is RGB-only")
    sources = _video_files(rgb) if batch else [rgb]
    model = PSG4DModel.from_pretrained(ckpt)
    if depth is None and model.estimators is not None:
        log.info("no depth given: depth features are estimated from RGB by the checkpoint's depth estimator (F_de)")
    elif depth is None:
        log.warning(
            "no depth given: RGB-only mode. The encoder's aggregator uses the RGB branch alone; depth is not"
            " estimated (this checkpoint has no 2D-to-4D transfer estimators: train the transfer stages for them)."
        )
    predictor = Predictor(model=model, config=PredictorConfig(max_new_tokens=max_new_tokens, max_candidates=candidates,
                                                              threads=threads))
    for src in tqdm(sources, desc="predict", unit="video", disable=not batch):
        video = load_video(
            src, depth=depth, depth_scale=depth_scale, fps=fps, max_frames=max_frames or model.config.max_frames,
            size=size,
        )
        graph = predictor.predict(video)
        target = out / f"{src.stem}.json" if batch else out
        graph.save(target)
        if report:
            from psg4d.viz.report import write_report

            write_report(target.with_suffix(".html"), graph, video)
        log.info("%s: %d objects, %d ranked relations -> %s", video.video_id, len(graph.objects),
                 len(graph.relations), target)


def diagnose_command(
    ckpt: Path = typer.Option(..., "--ckpt", help="Checkpoint folder written by training."),
    data: Path = typer.Option(..., "--data", help="Dataset folder (any supported format)."),
    split: str = typer.Option("val", "--split", help="Split to draw the videos from."),
    limit: int = typer.Option(8, "--limit", help="Number of videos (the grounding table is limit x limit)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the numbers as JSON."),
) -> None:
    """Does the LLM read the video (grounding gap), and how good are masks from the ground-truth text?"""
    from psg4d.data.readers import open_dataset
    from psg4d.infer.diagnostics import format_reports, grounding, teacher_forced_masks
    from psg4d.model.psg4d_llm import PSG4DModel
    from psg4d.utils.io import atomic_write_json

    if limit < 2:
        raise ConfigError(f"--limit must be at least 2 (got {limit}): the grounding table compares videos")
    model = PSG4DModel.from_pretrained(ckpt)
    reader = open_dataset(data)
    if split not in reader.splits:
        raise DataError(data, f"no split {split!r}; the dataset has {', '.join(reader.splits)}")
    samples = [reader.read(v) for v in reader.video_ids(split)[:limit]]
    if len(samples) < 2:
        raise DataError(data, f"split {split!r} has {len(samples)} video(s); the grounding table needs 2")
    g = grounding(model, samples)
    m = teacher_forced_masks(model, samples)
    typer.echo(format_reports(g, m))
    if json_out is not None:
        atomic_write_json(json_out, {
            "grounding_gap": g.gap, "grounding_top1": g.top1, "logprob": g.logprob.tolist(),
            "tf_mask_hit": m.hit, "tf_mask_hit_per_category": m.per_category,
        }, indent=2)
