"""``psg4d predict``: a trained checkpoint + an RGB(-D) video -> a ranked 4D scene graph (JSON)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

log = logging.getLogger(__name__)


def predict_command(
    ckpt: Path = typer.Option(..., "--ckpt", help="Checkpoint folder written by training (save_pretrained)."),
    rgb: Path = typer.Option(..., "--rgb", help="Folder of RGB frames (png/jpg) or a video file."),
    out: Path = typer.Option(..., "--out", help="Output scene-graph JSON."),
    depth: Optional[Path] = typer.Option(None, "--depth", help="Folder of depth frames (.npy metres or 16-bit png)."),
    depth_scale: float = typer.Option(1000.0, "--depth-scale", help="16-bit depth png units per metre."),
    fps: Optional[float] = typer.Option(None, "--fps", help="Resample the video to this frame rate first."),
    max_frames: Optional[int] = typer.Option(
        None, "--max-frames", help="Read at most this many frames (default: the model's max_frames)."
    ),
    size: Optional[int] = typer.Option(None, "--size", help="Resize frames so the shorter side is SIZE."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Generation length limit."),
    candidates: int = typer.Option(300, "--candidates", help="Keep at most this many ranked relations."),
) -> None:
    """Predict the 4D scene graph of one video and write it as JSON."""
    from psg4d.infer.predictor import Predictor, PredictorConfig
    from psg4d.infer.video_io import load_video
    from psg4d.model.psg4d_llm import PSG4DModel

    model = PSG4DModel.from_pretrained(ckpt)
    video = load_video(
        rgb,
        depth=depth,
        depth_scale=depth_scale,
        fps=fps,
        max_frames=max_frames or model.config.max_frames,
        size=size,
    )
    predictor = Predictor(
        model=model, config=PredictorConfig(max_new_tokens=max_new_tokens, max_candidates=candidates)
    )
    graph = predictor.predict(video)
    graph.save(out)
    log.info("%s: %d objects, %d ranked relations -> %s", video.video_id, len(graph.objects), len(graph.relations), out)
