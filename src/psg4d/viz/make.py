"""What ``psg4d viz`` does, as one library call: :class:`VizRequest` and :func:`make_viz` (an HTML
report of one prediction over its video, with GIF/MP4 overlays when asked), and how the video a
prediction was made on is read again (:func:`load_video_for`)."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from psg4d.data.schema import SceneGraph4D, iter_scene_graphs
from psg4d.errors import ConfigError, DataError
from psg4d.utils.io import atomic_path

# The report embeds frames at most this long (psg4d.viz.report.render_report's max_side).
REPORT_MAX_SIDE = 640


@dataclass(frozen=True, kw_only=True)
class VizRequest:
    """One ``psg4d viz`` call (see the command's help for each flag)."""

    pred: Path
    video: Path
    out: Path
    depth: Path | None = None
    depth_scale: float = 1000.0
    gt: Path | None = None
    metrics: Path | None = None
    gif: Path | None = None
    mp4: Path | None = None
    video_id: str | None = None
    fps: float | None = None
    max_frames: int | None = None
    top_k: int = 20
    display_frames: int = 300


def make_viz(req: VizRequest) -> list[Path]:
    """Write the report (and overlays) ``req`` asks for; the paths written. Everything is read and
    checked before anything is written, and all outputs land together or not at all."""
    from psg4d.eval.sources import ground_truth_for_video
    from psg4d.utils.io import check_output_file
    from psg4d.viz.overlay import export_gif, export_mp4
    from psg4d.viz.report import render_report
    from psg4d.viz.report_data import display_frames

    for flag, value in (("--fps", req.fps), ("--max-frames", req.max_frames), ("--top-k", req.top_k),
                        ("--display-frames", req.display_frames), ("--depth-scale", req.depth_scale)):
        if value is not None and not value > 0:
            raise ConfigError(f"{flag} must be positive, got {value:g}")
    for path in (req.out, req.gif, req.mp4):
        if path is not None:
            check_output_file(path)
    graph = pick_graph(req.pred, req.video_id, "prediction")
    gt_graph = ground_truth_for_video(req.gt, graph.video_id) if req.gt is not None else None
    metrics_d = _read_metrics(req.metrics) if req.metrics is not None else None
    # only the frames the player shows are read (a 10,000-frame video costs its ~300 shown frames),
    # unless an overlay of every frame is asked for or the prediction has no frame record
    shown = None
    if req.gif is None and req.mp4 is None and recorded_frames(graph, fps=req.fps, max_frames=req.max_frames):
        shown = display_frames(graph.num_frames, req.display_frames)
    vid = load_video_for(graph, req.video, depth=req.depth, depth_scale=req.depth_scale, fps=req.fps,
                         max_frames=req.max_frames, positions=shown)
    html_text = render_report(graph, vid, gt=gt_graph, metrics=metrics_d, top_k=req.top_k,
                              max_frames=req.display_frames, shown=shown)
    with contextlib.ExitStack() as stack:
        tmp_html = stack.enter_context(atomic_path(req.out, suffix=".html"))
        tmp_html.write_text(html_text, encoding="utf-8")
        if req.gif is not None:
            export_gif(stack.enter_context(atomic_path(req.gif, suffix=".gif")), vid, graph)
        if req.mp4 is not None:
            export_mp4(stack.enter_context(atomic_path(req.mp4, suffix=".mp4")), vid, graph)
    return [p for p in (req.out, req.gif, req.mp4) if p is not None]


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


def recorded_frames(graph: SceneGraph4D, *, fps: float | None = None, max_frames: int | None = None) -> list[int] | None:
    """The source frame of each of ``graph``'s frames as ``psg4d predict`` recorded them
    (``meta["frame_indices"]``); None where there is no record, or ``fps`` / ``max_frames``
    resample explicitly instead (older predictions carry no record)."""
    keep = graph.meta.get("frame_indices") if fps is None and max_frames is None else None
    return [int(i) for i in keep] if isinstance(keep, list) and len(keep) == graph.num_frames else None


def load_video_for(graph: SceneGraph4D, video: Path, *, depth: Path | None = None, depth_scale: float = 1000.0,
                   fps: float | None = None, max_frames: int | None = None, max_side: int = REPORT_MAX_SIDE,
                   positions: list[int] | None = None):
    """The frames of ``video`` that ``graph`` was predicted on (:func:`recorded_frames`), or only
    those at ``positions`` of its timeline (they need the record). Frames are decoded at most
    ``max_side`` pixels long, what the report embeds, so a long or high-resolution video costs
    memory for what is shown, not for the file's size."""
    from psg4d.data.video_io import load_video, probe_video

    keep = recorded_frames(graph, fps=fps, max_frames=max_frames)
    info = probe_video(video)
    if keep and max(keep) >= info.num_frames:
        raise DataError(video, f"the prediction refers to source frame {max(keep)} but the video has"
                               f" {info.num_frames} frames: is it the video that was predicted?")
    if positions is not None:
        if keep is None:
            raise ValueError("positions need the prediction's frame record (meta['frame_indices'])")
        keep = [keep[p] for p in positions]
    scale = min(1.0, max_side / max(info.height, info.width))
    size = None if scale >= 1.0 else (max(1, round(info.height * scale)), max(1, round(info.width * scale)))
    return load_video(video, depth=depth, depth_scale=depth_scale, fps=fps, max_frames=max_frames, size=size,
                      frame_indices=keep)
