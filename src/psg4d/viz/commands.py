"""``psg4d viz``: a shareable HTML report (and optional GIF/MP4 overlays) of one prediction; the
command is one call of :func:`psg4d.viz.make.make_viz`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def viz_command(
    pred: Path = typer.Argument(
        ..., metavar="PRED", help="Predicted scene graph (.json, or a .jsonl collection with --video-id)."
    ),
    video: Path = typer.Option(..., "--video", help="The RGB video: a folder of frames or a video file."),
    out: Path = typer.Option(..., "--out", help="Report to write (one self-contained .html)."),
    depth: Optional[Path] = typer.Option(None, "--depth", help="Depth folder (.npy metres or 16-bit PNG)."),
    depth_scale: float = typer.Option(1000.0, "--depth-scale", help="16-bit PNG depth units per metre."),
    gt: Optional[Path] = typer.Option(
        None, "--gt", help="Ground truth to compare with, as psg4d eval takes it: a scene-graph file or a dataset"
        " folder (the prediction's video is looked up by its id)."
    ),
    metrics: Optional[Path] = typer.Option(None, "--metrics", help="metrics.json to show as a table."),
    gif: Optional[Path] = typer.Option(None, "--gif", help="Also write the overlay as an animated GIF."),
    mp4: Optional[Path] = typer.Option(None, "--mp4", help="Also write the overlay as an MP4."),
    video_id: Optional[str] = typer.Option(None, "--video-id", help="Which video of a collection file."),
    fps: Optional[float] = typer.Option(None, "--fps", help="Resample the video to this rate (as for predict)."),
    max_frames: Optional[int] = typer.Option(None, "--max-frames", help="Uniformly subsample the video."),
    top_k: int = typer.Option(20, "--top-k", help="Predicted relations shown in the graph and timeline."),
    display_frames: int = typer.Option(300, "--display-frames", help="Most frames embedded for playback."),
) -> None:
    """Write an HTML report of a predicted 4D scene graph over its video (and GT, metrics)."""
    from psg4d.viz.make import VizRequest, make_viz

    written = make_viz(VizRequest(pred=pred, video=video, out=out, depth=depth, depth_scale=depth_scale, gt=gt,
                                  metrics=metrics, gif=gif, mp4=mp4, video_id=video_id, fps=fps,
                                  max_frames=max_frames, top_k=top_k, display_frames=display_frames))
    typer.echo("wrote " + ", ".join(str(p) for p in written))
