"""A self-contained HTML report of one video's predicted 4D scene graph.

One file, nothing fetched: frames are embedded as base64 JPEG, masks as the
scene graph's own compressed COCO RLE strings (decoded by a few lines of
inline JavaScript), styles and scripts inline. It shows

* the video with coloured mask-tube overlays (play/pause, scrub slider,
  per-object toggles, legend with category names);
* the scene graph as an inline SVG (nodes coloured like their tubes, edges
  labelled with predicates; relations active at the current frame are
  highlighted);
* a timeline, one row per triplet (the ``top_k`` best predictions and, with
  ground truth, every GT triplet), bars over its spans, GT beside the
  prediction, hits and misses coloured;
* the metrics table when metrics or ground truth are given.

The pieces live beside this module: :mod:`psg4d.viz.timeline` (hits, misses and
the timeline SVG), :mod:`psg4d.viz.graph_view` (the legend and the graph SVG),
:mod:`psg4d.viz.report_data` (the frames and masks the player reads) and
:mod:`psg4d.viz.chain_view` (the chained inference's turns); this one checks the
inputs, fills the page template (``templates/report.html``) and writes the file.
"""

from __future__ import annotations

import html
import json
import math
import re
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from psg4d.data.schema import SceneGraph4D, Video4D
from psg4d.errors import DataError
from psg4d.utils.io import atomic_write_text
from psg4d.viz.chain_view import chain_html
from psg4d.viz.graph_view import featured_objects, graph_svg, legend_html
from psg4d.viz.overlay import check_alignment, object_colours
from psg4d.viz.report_data import (
    depth_to_rgb,
    display_frames,
    display_size,
    encode_frames,
    image_format_for,
    object_tubes,
)
from psg4d.viz.timeline import (
    FALSE_POSITIVE,
    GT_BAR_COLOUR,
    HIT,
    MISS,
    PREDICTED,
    STATUS_COLOURS,
    TimelineRow,
    match_triplets,
    status_legend_html,
    timeline_summary,
    timeline_svg,
)

# what this module handed out before its pieces moved beside it
__all__ = [
    "FALSE_POSITIVE", "GT_BAR_COLOUR", "HIT", "MISS", "PREDICTED", "STATUS_COLOURS", "TimelineRow",
    "depth_to_rgb", "graph_svg", "legend_html", "match_triplets", "metrics_table", "render_report",
    "timeline_summary", "timeline_svg", "write_report",
]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return str(v)


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.extend(_flatten(v, name + "."))
        else:
            out.append((name, v))
    return out


def metrics_table(metrics: dict | None, summary: dict[str, Any] | None) -> str:
    """The metrics and the timeline summary as HTML tables, nested keys dotted ("" when both are empty)."""
    parts = []
    for title, table in (("Metrics", metrics), ("Timeline summary", summary)):
        if not table:
            continue
        body = "".join(
            f"<tr><td>{html.escape(k)}</td><td class='num'>{html.escape(_fmt(v))}</td></tr>" for k, v in _flatten(table)
        )
        parts.append(f"<table class='metrics'><caption>{title}</caption><tbody>{body}</tbody></table>")
    return "".join(parts)


def render_report(
    pred: SceneGraph4D,
    video: Video4D,
    *,
    gt: SceneGraph4D | None = None,
    metrics: dict | None = None,
    top_k: int = 20,
    max_frames: int = 300,
    max_side: int = 640,
    image_format: str = "auto",
    jpeg_quality: int = 85,
    title: str | None = None,
    shown: Sequence[int] | None = None,
) -> str:
    """The report as one HTML string (see the module doc).

    ``max_frames``: frames embedded for playback (uniformly subsampled beyond
    that; the timeline still covers every frame). ``max_side``: longer side of
    the embedded frames in pixels. ``image_format``: ``png``, ``jpeg`` or ``auto``
    (PNG up to 128x128 pixels, where JPEG artefacts would be magnified, else JPEG).
    ``shown``: ``video`` holds only these frames of the prediction's timeline, the ones the player
    shows (:func:`display_frames` of the prediction's length and ``max_frames``), so a long video
    is read for what is embedded; default: ``video`` holds every frame.
    """
    _check_inputs(pred, video, gt, shown, max_frames)
    colours = object_colours(pred)
    shown_rel = pred.ranked()[:top_k]
    rows = match_triplets(pred, gt, top_k=top_k)
    summary = timeline_summary(rows, gt)
    data = _player_data(pred, video, colours, max_frames=max_frames, max_side=max_side,
                        image_format=image_format, jpeg_quality=jpeg_quality, shown=shown is not None)
    title = title or f"psg4d report: {pred.video_id or video.video_id or 'video'}"
    data_json = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return _fill_template({
        "__TITLE__": html.escape(title),
        "__SUBTITLE__": html.escape(_subtitle(pred, gt, top_k)),
        "__LEGEND__": legend_html(pred, colours, featured_objects(pred, shown_rel)),
        "__GRAPH_SVG__": graph_svg(pred, shown_rel, colours),
        "__TIMELINE_SVG__": timeline_svg(rows, pred.num_frames, colours, gt is not None),
        "__STATUS_LEGEND__": status_legend_html(gt is not None),
        "__CHAIN__": chain_html(pred),
        "__METRICS__": metrics_table(metrics, summary if gt is not None else None) or "<p><em>no metrics given</em></p>",
        "__DATA_JSON__": data_json,
    })


def _check_inputs(pred: SceneGraph4D, video: Video4D, gt: SceneGraph4D | None, shown: Sequence[int] | None,
                  max_frames: int) -> None:
    """DataError unless the prediction fits the video (or its ``shown`` frames) and the ground truth
    has its frame count."""
    if shown is None:
        check_alignment(video, pred)
    else:
        if list(shown) != display_frames(pred.num_frames, max_frames):
            raise ValueError("shown must be the frames the player shows: display_frames(num_frames, max_frames)")
        if video.num_frames != len(shown):
            raise DataError(video.video_id or "video", f"video has {video.num_frames} frames, the report shows "
                                                       f"{len(shown)} of the prediction's {pred.num_frames}")
    if gt is not None and gt.num_frames != pred.num_frames:
        raise DataError(
            gt.video_id, f"ground truth has {gt.num_frames} frames, the prediction has {pred.num_frames}"
        )


def _player_data(pred: SceneGraph4D, video: Video4D, colours: dict[int, tuple[int, int, int]], *,
                 max_frames: int, max_side: int, image_format: str, jpeg_quality: int,
                 shown: bool) -> dict[str, Any]:
    """What the page's player reads (:mod:`psg4d.viz.report_data`): frames, depth and masks.
    ``shown``: ``video`` holds only the displayed frames, in order."""
    disp = display_frames(pred.num_frames, max_frames)
    size = display_size(video, max_side)
    rows = list(range(len(disp))) if shown else disp  # where each displayed frame is in ``video``
    frames, depth_frames = encode_frames(video, rows, size, image_format_for(image_format, size), jpeg_quality)
    # the source frame of every frame of the timeline: the video's own, or the prediction's record
    # (the only one that covers the frames not read)
    source = pred.meta["frame_indices"] if shown else video.frame_indices
    return {
        "num_frames": pred.num_frames,
        "display_frames": disp,
        "frame_indices": [int(i) for i in source],
        "fps": float(video.fps or 5.0),
        "mask_size": [pred.height, pred.width],
        "frame_size": list(size),
        "frames": frames,
        "depth_frames": depth_frames,
        "objects": object_tubes(pred, disp, colours),
    }


def _subtitle(pred: SceneGraph4D, gt: SceneGraph4D | None, top_k: int) -> str:
    n_gt = "" if gt is None else f", {len(gt.relations)} GT triplets"
    return (
        f"{pred.num_frames} frames, {pred.height}x{pred.width} masks, {len(pred.objects)} objects, "
        f"{len(pred.relations)} predicted relations (top {min(top_k, len(pred.relations))} shown){n_gt}"
    )


def _fill_template(replacements: dict[str, str]) -> str:
    """The page template with each placeholder replaced."""
    template = resources.files("psg4d.viz").joinpath("templates/report.html").read_text(encoding="utf-8")
    # one pass, so user text that happens to contain a placeholder name is never substituted
    pattern = re.compile("|".join(re.escape(k) for k in replacements))
    return pattern.sub(lambda m: replacements[m.group(0)], template)


def write_report(path: str | Path, pred: SceneGraph4D, video: Video4D, **kwargs: Any) -> Path:
    """:func:`render_report` written atomically to ``path``."""
    path = Path(path)
    atomic_write_text(path, render_report(pred, video, **kwargs))
    return path
