"""``psg4d predict``: a trained checkpoint + an RGB(-D) video -> a ranked 4D scene graph (JSON).

``--rgb`` is a folder of frames, a video file, or a folder of video files (batch
mode, :mod:`psg4d.infer.batch`: ``--out`` is then a folder and each video gives
``OUT/<name>.json``). How a video is read and streamed: :mod:`psg4d.infer.video_predict`; the
command is one call of :func:`psg4d.infer.predict_run.run_predict`.
Mask tubes are stored in the JSON as per-frame COCO RLEs; ``--report`` adds the
visual HTML report next to each prediction.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer


log = logging.getLogger(__name__)


def predict_command(
    ckpt: Path = typer.Option(..., "--ckpt", help="Checkpoint folder written by training (save_pretrained)."),
    rgb: Path = typer.Option(..., "--rgb", help="Folder of RGB frames, a video file, or a folder of video files."),
    out: Path = typer.Option(..., "--out", help="Output scene-graph JSON (a folder in batch mode)."),
    depth: Optional[Path] = typer.Option(None, "--depth", help="Folder of depth frames (.npy metres or 16-bit png)."),
    depth_scale: float = typer.Option(1000.0, "--depth-scale", help="16-bit depth png units per metre."),
    fps: Optional[float] = typer.Option(None, "--fps", help="Resample the video to this frame rate first."),
    max_frames: Optional[int] = typer.Option(
        None, "--max-frames",
        help="Sample this many frames uniformly and predict them in one pass (default: every frame, streamed"
             " in windows when the video is longer than the model's max_frames).",
    ),
    size: Optional[int] = typer.Option(
        None, "--size", help="Shorter side of the frames read (default: the model's image_size, never upscaled).",
    ),
    window: Optional[int] = typer.Option(
        None, "--window", help="Streaming window in frames (default: 4 x the model's max_frames)."
    ),
    stride: Optional[int] = typer.Option(
        None, "--stride", help="Frames between streaming windows (default: 3/4 of a window)."
    ),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Generation length limit."),
    candidates: int = typer.Option(300, "--candidates", help="Keep at most this many ranked relations."),
    report: bool = typer.Option(False, "--report", help="Also write the HTML report next to each prediction."),
    threads: Optional[int] = typer.Option(
        None, "--threads", help="torch threads (default: the CPUs this process may use that others leave free)."
    ),
    workers: Optional[int] = typer.Option(
        None, "--workers",
        help="Batch mode outside torchrun: local worker processes (default: one per 4 CPUs, at least 1).",
    ),
    mode: str = typer.Option(
        "auto", "--mode",
        help="direct (one scene-graph text), chain (describe -> pairs -> relation -> span, open vocabulary;"
             " needs a checkpoint trained with model.chain_prob > 0) or auto (the one psg4d tune-ranking chose on"
             " validation for this checkpoint; direct where none was chosen).",
    ),
    vocab: Optional[Path] = typer.Option(
        None, "--vocab",
        help="Chain mode: class names (a text file, one per line, or a dataset folder) for objects of kinds"
             " training never named (default: such objects are named in free text).",
    ),
    namer: Optional[str] = typer.Option(
        None, "--namer",
        help="Chain mode: the pretrained language model that names objects of kinds training never named"
             " (smollm2-135m, gemma3-270m or a local HF folder; default: the checkpoint's own LLM).",
    ),
    video_id: Optional[str] = typer.Option(
        None, "--video-id",
        help="The prediction's video id, what `psg4d eval` matches to the ground truth (default: the file's"
             " name; for a frame folder named like align_rgb, rgb or frames, its parent folder's name).",
    ),
) -> None:
    """Predict the 4D scene graph of one video (or a folder of videos) and write it as JSON.

    Every source frame gets masks and spans; the JSON records the frames read for `psg4d viz`.
    """
    from psg4d.infer.predict_run import PredictRequest, run_predict
    from psg4d.infer.video_predict import ReadOptions

    read = ReadOptions(depth=depth, depth_scale=depth_scale, fps=fps, max_frames=max_frames, size=size,
                       window=window, stride=stride)
    run_predict(PredictRequest(ckpt=ckpt, rgb=rgb, out=out, read=read, max_new_tokens=max_new_tokens,
                               candidates=candidates, report=report, threads=threads, workers=workers, mode=mode,
                               vocab=vocab, namer=namer, video_id=video_id))


def diagnose_command(
    ckpt: Path = typer.Option(..., "--ckpt", help="Checkpoint folder written by training."),
    data: Path = typer.Option(..., "--data", help="Dataset folder (any supported format)."),
    split: str = typer.Option("val", "--split", help="Split to draw the videos from."),
    limit: int = typer.Option(8, "--limit", help="Number of videos (the grounding table is limit x limit)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the numbers as JSON."),
) -> None:
    """Does the LLM read the video (grounding gap) and the order of its frames (reversal probe), and how
    good are masks from the ground-truth text?"""
    from psg4d.infer.diagnostics import DiagnoseRequest, run_diagnose

    typer.echo(run_diagnose(DiagnoseRequest(ckpt=ckpt, data=data, split=split, limit=limit, json_out=json_out)))
