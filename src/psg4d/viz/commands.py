"""``psg4d viz``: a shareable HTML report (and optional GIF/MP4 overlays) of one prediction."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Optional

import typer

from psg4d.data.schema import SceneGraph4D, iter_scene_graphs
from psg4d.errors import ConfigError, DataError
from psg4d.utils.io import atomic_path

# The report embeds frames at most this long (psg4d.viz.report.render_report's max_side).
REPORT_MAX_SIDE = 640


def pick_graph(path: Path, video_id: str | None, what: str) -> SceneGraph4D:
    """The scene graph of ``video_id`` in a scene-graph file or collection (the only one if not given)."""
    graphs = list(iter_scene_graphs(path))
    if not graphs:
        raise DataError(path, f"no scene graphs in the {what} file")
    if video_id is not None:
        for g in graphs:
            if g.video_id == video_id:
                return g
        ids = ", ".join(repr(g.video_id) for g in graphs[:10])
        raise DataError(path, f"no scene graph for video {video_id!r} (has {ids}{', ...' if len(graphs) > 10 else ''})")
    if len(graphs) > 1:
        raise DataError(path, f"{len(graphs)} scene graphs in the {what} file: choose one with --video-id")
    return graphs[0]


def _read_metrics(path: Path) -> dict:
    if not path.exists():
        raise DataError(path, "file not found")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(path, f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(d, dict):
        raise DataError(path, f"metrics must be a JSON object, got {type(d).__name__}")
    return d


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
    from psg4d.eval.sources import ground_truth_for_video
    from psg4d.viz.overlay import export_gif, export_mp4
    from psg4d.viz.report import render_report

    # everything is read and checked before anything is written: bad input leaves no output
    from psg4d.utils.io import check_output_file

    for flag, value in (("--fps", fps), ("--max-frames", max_frames), ("--top-k", top_k),
                        ("--display-frames", display_frames), ("--depth-scale", depth_scale)):
        if value is not None and not value > 0:
            raise ConfigError(f"{flag} must be positive, got {value:g}")
    for path in (out, gif, mp4):
        if path is not None:
            check_output_file(path)
    graph = pick_graph(pred, video_id, "prediction")
    gt_graph = ground_truth_for_video(gt, graph.video_id) if gt is not None else None
    metrics_d = _read_metrics(metrics) if metrics is not None else None
    vid = load_video_for(graph, video, depth=depth, depth_scale=depth_scale, fps=fps, max_frames=max_frames)
    html_text = render_report(graph, vid, gt=gt_graph, metrics=metrics_d, top_k=top_k, max_frames=display_frames)
    with contextlib.ExitStack() as stack:
        # all outputs land together or not at all
        tmp_html = stack.enter_context(atomic_path(out, suffix=".html"))
        tmp_html.write_text(html_text, encoding="utf-8")
        if gif is not None:
            export_gif(stack.enter_context(atomic_path(gif, suffix=".gif")), vid, graph)
        if mp4 is not None:
            export_mp4(stack.enter_context(atomic_path(mp4, suffix=".mp4")), vid, graph)
    typer.echo(f"wrote {out}" + "".join(f", {p}" for p in (gif, mp4) if p is not None))


def load_video_for(graph: SceneGraph4D, video: Path, *, depth: Path | None = None, depth_scale: float = 1000.0,
                   fps: float | None = None, max_frames: int | None = None, max_side: int = REPORT_MAX_SIDE):
    """The frames of ``video`` that ``graph`` was predicted on: the source frames its
    ``meta["frame_indices"]`` records (what ``psg4d predict`` writes), unless ``fps`` /
    ``max_frames`` resample explicitly (older predictions carry no record). Frames are
    decoded at most ``max_side`` pixels long, what the report embeds, so a long or
    high-resolution video costs memory for what is shown, not for the file's size."""
    from psg4d.data.video_io import load_video, probe_video

    keep = graph.meta.get("frame_indices") if fps is None and max_frames is None else None
    info = probe_video(video)
    if isinstance(keep, list) and len(keep) == graph.num_frames:
        if keep and max(keep) >= info.num_frames:
            raise DataError(video, f"the prediction refers to source frame {max(keep)} but the video has"
                                   f" {info.num_frames} frames: is it the video that was predicted?")
    else:
        keep = None
    scale = min(1.0, max_side / max(info.height, info.width))
    size = None if scale >= 1.0 else (max(1, round(info.height * scale)), max(1, round(info.width * scale)))
    return load_video(video, depth=depth, depth_scale=depth_scale, fps=fps, max_frames=max_frames, size=size,
                      frame_indices=keep)

