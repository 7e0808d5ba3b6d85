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

Hits (:func:`match_triplets`): a predicted triplet is a *hit* when its
``(subject category, predicate, object category)`` equals that of a GT triplet
and their spans overlap in at least one frame; a GT triplet that no shown
prediction hits is a *miss*. The SVG/HTML is produced here, so its contents are
plain text a test can read; the script only animates it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from psg4d.data.schema import Relation, SceneGraph4D, Video4D, rle_decode, rle_encode, spans_from_mask
from psg4d.errors import DataError
from psg4d.utils.io import atomic_write_text
from psg4d.viz.chain_view import chain_html
from psg4d.viz.overlay import check_alignment, hex_colour, object_colours

HIT, FALSE_POSITIVE, MISS, PREDICTED = "hit", "false-positive", "miss", "predicted"
STATUS_COLOURS = {HIT: "#2ca02c", FALSE_POSITIVE: "#d62728", MISS: "#ff7f0e", PREDICTED: "#1f77b4"}
GT_BAR_COLOUR = "#6b6b6b"


@dataclass(frozen=True, kw_only=True)
class TimelineRow:
    """One timeline row: a predicted triplet (with the GT spans it hits) or a missed GT triplet."""

    subject: str
    predicate: str
    object: str
    subject_id: int | None
    object_id: int | None
    status: str  # hit / false-positive / predicted (no GT given) / miss
    pred_spans: list[tuple[int, int]]
    gt_spans: list[tuple[int, int]]
    rank: int | None = None
    score: float | None = None

    @property
    def label(self) -> str:
        return f"{self.subject} \u2014{self.predicate}\u2192 {self.object}"


def _cat(graph: SceneGraph4D) -> dict[int, str]:
    return {o.object_id: o.majority_category() for o in graph.objects}


def _key(s: str) -> str:
    return s.strip().lower()


def _overlap(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> bool:
    return any(x0 <= y1 and y0 <= x1 for x0, x1 in a for y0, y1 in b)


def match_triplets(pred: SceneGraph4D, gt: SceneGraph4D | None, *, top_k: int = 20) -> list[TimelineRow]:
    """Rows of the timeline: the ``top_k`` ranked predictions, then the GT triplets none of them hits."""
    pc = _cat(pred)
    shown = pred.ranked()[:top_k]
    gt_rels: list[Relation] = [] if gt is None else list(gt.relations)
    gc = {} if gt is None else _cat(gt)
    gt_keys = [(_key(gc[r.subject_id]), _key(r.predicate), _key(gc[r.object_id])) for r in gt_rels]
    found = [False] * len(gt_rels)
    rows = []
    for rank, r in enumerate(shown, 1):
        key = (_key(pc[r.subject_id]), _key(r.predicate), _key(pc[r.object_id]))
        hit_spans: list[tuple[int, int]] = []
        for i, g in enumerate(gt_rels):
            if gt_keys[i] == key and _overlap(r.spans, g.spans):
                found[i] = True
                hit_spans.extend(g.spans)
        if gt is None:
            status = PREDICTED
        else:
            status = HIT if hit_spans else FALSE_POSITIVE
        rows.append(TimelineRow(
            subject=pc[r.subject_id], predicate=r.predicate, object=pc[r.object_id], subject_id=r.subject_id,
            object_id=r.object_id, status=status, pred_spans=list(r.spans), gt_spans=sorted(set(hit_spans)),
            rank=rank, score=r.score,
        ))
    for i, g in enumerate(gt_rels):
        if not found[i]:
            rows.append(TimelineRow(
                subject=gc[g.subject_id], predicate=g.predicate, object=gc[g.object_id], subject_id=None,
                object_id=None, status=MISS, pred_spans=[], gt_spans=list(g.spans),
            ))
    return rows


def timeline_summary(rows: list[TimelineRow], gt: SceneGraph4D | None) -> dict[str, Any]:
    shown = [r for r in rows if r.status != MISS]
    out: dict[str, Any] = {"predictions shown": len(shown)}
    if gt is not None:
        hits = sum(r.status == HIT for r in shown)
        misses = sum(r.status == MISS for r in rows)
        n_gt = len(gt.relations)
        out.update({
            "hits": hits,
            "false positives": len(shown) - hits,
            "GT triplets": n_gt,
            "GT found": n_gt - misses,
            "GT missed": misses,
            "precision (shown)": hits / len(shown) if shown else 0.0,
            "GT recall (shown)": (n_gt - misses) / n_gt if n_gt else 0.0,
        })
    return out


# --------------------------------------------------------------------------- pieces


def _spans_attr(spans: list[tuple[int, int]]) -> str:
    return ",".join(f"{a}-{b}" for a, b in spans)


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
    parts = []
    for title, table in (("Metrics", metrics), ("Timeline summary", summary)):
        if not table:
            continue
        body = "".join(
            f"<tr><td>{html.escape(k)}</td><td class='num'>{html.escape(_fmt(v))}</td></tr>" for k, v in _flatten(table)
        )
        parts.append(f"<table class='metrics'><caption>{title}</caption><tbody>{body}</tbody></table>")
    return "".join(parts)


def legend_html(graph: SceneGraph4D, colours: dict[int, tuple[int, int, int]]) -> str:
    items = []
    for o in graph.objects:
        cat = html.escape(o.majority_category())
        items.append(
            f"<label class='legend-item' data-obj='{o.object_id}'>"
            f"<input type='checkbox' class='obj-toggle' data-obj='{o.object_id}' checked>"
            f"<span class='swatch' style='background:{hex_colour(colours[o.object_id])}'></span>"
            f"{cat} <span class='oid'>#{o.object_id}</span></label>"
        )
    return "".join(items) or "<em>no objects</em>"


def graph_svg(graph: SceneGraph4D, relations: list[Relation], colours: dict[int, tuple[int, int, int]]) -> str:
    """Objects on a circle, one curved arrow per (subject, object) pair labelled with its predicates."""
    W, H = 560, 460
    objs = graph.objects
    n = max(1, len(objs))
    R = 165 if n > 2 else 100
    pos = {
        o.object_id: (W / 2 + R * math.cos(2 * math.pi * i / n - math.pi / 2),
                      H / 2 + R * math.sin(2 * math.pi * i / n - math.pi / 2))
        for i, o in enumerate(objs)
    }
    pairs: dict[tuple[int, int], list[Relation]] = {}
    for r in relations:
        pairs.setdefault((r.subject_id, r.object_id), []).append(r)
    edges = []
    for (s, o), rels in pairs.items():
        (x1, y1), (x2, y2) = pos[s], pos[o]
        union = sorted({sp for r in rels for sp in r.spans})
        n_lines = len(rels)
        if s == o:  # self relation: a loop above the node, labels stacked upwards
            d = f"M{x1 - 8:.1f},{y1 - 20:.1f} C{x1 - 40:.1f},{y1 - 80:.1f} {x1 + 40:.1f},{y1 - 80:.1f} {x1 + 8:.1f},{y1 - 20:.1f}"
            lx, ly, anchor, top = x1, y1 - 72, "middle", y1 - 72 - 13 * n_lines
        else:
            dx, dy = x2 - x1, y2 - y1
            dist = math.hypot(dx, dy) or 1.0
            ux, uy = dx / dist, dy / dist
            px, py = -uy, ux  # the right-hand normal of the direction of travel
            # bend to the right of the direction of travel, so a->b and b->a do not overlap;
            # strongly when that is away from the centre, gently when towards it, where the
            # inner edges of all pairs meet
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            outward = (cx - W / 2) * px + (cy - H / 2) * py > 0
            bend = 50 if outward or n <= 2 else 16
            mx, my = cx + px * bend, cy + py * bend
            sx, sy = x1 + ux * 22, y1 + uy * 22
            ex, ey = x2 - ux * 24, y2 - uy * 24
            d = f"M{sx:.1f},{sy:.1f} Q{mx:.1f},{my:.1f} {ex:.1f},{ey:.1f}"
            # the label block sits outside the curve's apex, on the bend's side, so the two
            # directions of a pair never share a spot
            lx, ly = (sx + 2 * mx + ex) / 4 + px * 6, (sy + 2 * my + ey) / 4 + py * 6
            anchor = "start" if px > 0.35 else "end" if px < -0.35 else "middle"
            top = ly + 10 if py > 0.35 else ly - 13 * n_lines + 3 if py < -0.35 else ly - 6.5 * n_lines + 8
        labels = "".join(
            f"<tspan x='{lx:.1f}' dy='{0 if k == 0 else 13}' class='pred' data-spans='{_spans_attr(r.spans)}'>"
            f"{html.escape(r.predicate)}</tspan>"
            for k, r in enumerate(rels)
        )
        edges.append(
            f"<g class='edge' data-subject='{s}' data-object='{o}' data-spans='{_spans_attr(union)}'>"
            f"<path d='{d}' marker-end='url(#arrow)'/>"
            f"<text x='{lx:.1f}' y='{top:.1f}' text-anchor='{anchor}'>{labels}</text></g>"
        )
    nodes = []
    for o in objs:
        x, y = pos[o.object_id]
        tube = o.tube
        present = "" if tube is None else _spans_attr(spans_from_mask(tube.present()))
        # the name goes radially outside the circle of nodes, away from the edges
        rx, ry = x - W / 2, y - H / 2
        rn = math.hypot(rx, ry) or 1.0
        tx, ty = x + 30 * rx / rn, y + 30 * ry / rn + 4
        anchor = "start" if rx / rn > 0.35 else "end" if rx / rn < -0.35 else "middle"
        nodes.append(
            f"<g class='node' data-obj='{o.object_id}' data-spans='{present}'>"
            f"<circle cx='{x:.1f}' cy='{y:.1f}' r='20' fill='{hex_colour(colours[o.object_id])}'/>"
            f"<text x='{tx:.1f}' y='{ty:.1f}' text-anchor='{anchor}'>{html.escape(o.majority_category())}"
            f" #{o.object_id}</text></g>"
        )
    return (
        f"<svg id='scene-graph' viewBox='0 0 {W} {H}' width='{W}' height='{H}' xmlns='http://www.w3.org/2000/svg'>"
        "<defs><marker id='arrow' viewBox='0 0 10 10' refX='9' refY='5' markerWidth='7' markerHeight='7' "
        "orient='auto-start-reverse'><path d='M0,0 L10,5 L0,10 z'/></marker></defs>"
        + "".join(edges) + "".join(nodes) + "</svg>"
    )


def timeline_svg(rows: list[TimelineRow], num_frames: int, colours: dict[int, tuple[int, int, int]],
                 with_gt: bool) -> str:
    label_w, bar_w, row_h = 330, 640, 30 if with_gt else 22
    W = label_w + bar_w + 20
    H = 28 + row_h * max(1, len(rows))
    T = max(1, num_frames)

    def x(frame: float) -> float:
        return label_w + bar_w * frame / T

    out = [
        f"<svg id='timeline' viewBox='0 0 {W} {H}' width='{W}' height='{H}' data-x0='{label_w}' data-w='{bar_w}'"
        " xmlns='http://www.w3.org/2000/svg'>",
        f"<rect class='tl-axis' x='{label_w}' y='0' width='{bar_w}' height='{H}'/>",
    ]
    for k in range(0, 11):
        f = round(k * (T - 1) / 10) if T > 1 else 0
        out.append(f"<text class='tick' x='{x(f + 0.5):.1f}' y='12' text-anchor='middle'>{f}</text>")
    for i, row in enumerate(rows):
        y0 = 20 + i * row_h
        rank = f"#{row.rank} " if row.rank is not None else "GT "
        score = f" ({row.score:.2f})" if row.score is not None else ""
        sc = STATUS_COLOURS[row.status]
        out.append(
            f"<g class='tl-row {row.status}' data-status='{row.status}' data-spans='{_spans_attr(row.pred_spans or row.gt_spans)}'>"
            f"<text class='tl-label' x='4' y='{y0 + row_h / 2 + 4:.1f}'>{html.escape(rank + row.label + score)}"
            f"<tspan class='status' fill='{sc}'> {row.status}</tspan></text>"
        )
        if with_gt:
            for a, b in row.gt_spans:
                out.append(
                    f"<rect class='bar gt' x='{x(a):.1f}' y='{y0 + 3}' width='{max(1.0, x(b + 1) - x(a)):.1f}' "
                    f"height='{row_h / 2 - 4:.1f}' fill='{GT_BAR_COLOUR if row.status != MISS else sc}'/>"
                )
        py = y0 + (row_h / 2 if with_gt else 3)
        for a, b in row.pred_spans:
            out.append(
                f"<rect class='bar pred' x='{x(a):.1f}' y='{py:.1f}' width='{max(1.0, x(b + 1) - x(a)):.1f}' "
                f"height='{(row_h / 2 - 4) if with_gt else row_h - 6:.1f}' fill='{sc}'/>"
            )
        out.append("</g>")
    out.append(f"<line id='tl-cursor' x1='{label_w}' x2='{label_w}' y1='14' y2='{H}'/>")
    out.append("</svg>")
    return "".join(out)


# --------------------------------------------------------------------------- frames


def _encode_image(rgb: np.ndarray, fmt: str, quality: int) -> str:
    buf = io.BytesIO()
    if fmt == "png":
        Image.fromarray(rgb).save(buf, format="PNG", optimize=True)
        mime = "image/png"
    else:
        Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
        mime = "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def depth_to_rgb(depth: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Depth in metres -> a perceptual blue (near) to yellow (far) ramp; unknown depth (0) black."""
    t = np.clip((depth - lo) / max(hi - lo, 1e-6), 0, 1)
    stops = np.array([[13, 8, 135], [126, 3, 168], [204, 71, 120], [248, 149, 64], [240, 249, 33]], np.float32)
    pos = t * (len(stops) - 1)
    i = np.minimum(pos.astype(int), len(stops) - 2)
    f = (pos - i)[..., None]
    rgb = stops[i] * (1 - f) + stops[i + 1] * f
    rgb[depth <= 0] = 0
    return rgb.astype(np.uint8)


def _display_frames(n: int, max_frames: int) -> list[int]:
    if n <= max_frames:
        return list(range(n))
    return sorted(set(np.round(np.linspace(0, n - 1, max_frames)).astype(int).tolist()))


def _compressed(rle: dict) -> str:
    if isinstance(rle["counts"], str):
        return rle["counts"]
    return rle_encode(rle_decode(rle))["counts"]


# --------------------------------------------------------------------------- report


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
) -> str:
    """The report as one HTML string (see the module doc).

    ``max_frames``: frames embedded for playback (uniformly subsampled beyond
    that; the timeline still covers every frame). ``max_side``: longer side of
    the embedded frames in pixels. ``image_format``: ``png``, ``jpeg`` or ``auto``
    (PNG up to 128x128 pixels, where JPEG artefacts would be magnified, else JPEG).
    """
    check_alignment(video, pred)
    if gt is not None and gt.num_frames != pred.num_frames:
        raise DataError(
            gt.video_id, f"ground truth has {gt.num_frames} frames, the prediction has {pred.num_frames}"
        )
    colours = object_colours(pred)
    shown_rel = pred.ranked()[:top_k]
    rows = match_triplets(pred, gt, top_k=top_k)
    summary = timeline_summary(rows, gt)

    disp = _display_frames(video.num_frames, max_frames)
    scale = min(1.0, max_side / max(video.height, video.width))
    dh, dw = max(1, round(video.height * scale)), max(1, round(video.width * scale))
    if image_format == "auto":
        image_format = "png" if dh * dw <= 128 * 128 else "jpeg"
    if image_format not in ("png", "jpeg"):
        raise ValueError(f"image_format must be png, jpeg or auto, got {image_format!r}")
    frames = []
    depth_frames = None
    if video.depth is not None:
        valid = video.depth[video.depth > 0]
        lo, hi = (float(np.percentile(valid, 2)), float(np.percentile(valid, 98))) if valid.size else (0.0, 1.0)
        depth_frames = []
    for t in disp:
        rgb = video.rgb[t]
        if (dh, dw) != rgb.shape[:2]:
            rgb = np.asarray(Image.fromarray(rgb).resize((dw, dh), Image.BILINEAR))
        frames.append(_encode_image(rgb, image_format, jpeg_quality))
        if depth_frames is not None:
            d = depth_to_rgb(video.depth[t], lo, hi)
            if (dh, dw) != d.shape[:2]:
                d = np.asarray(Image.fromarray(d).resize((dw, dh), Image.NEAREST))
            depth_frames.append(_encode_image(d, image_format, jpeg_quality))

    objects = []
    for o in pred.objects:
        rles = [] if o.tube is None else [
            None if o.tube.rles[t] is None else _compressed(o.tube.rles[t]) for t in disp
        ]
        objects.append({
            "id": o.object_id, "category": o.majority_category(), "colour": list(colours[o.object_id]), "rles": rles,
        })
    data = {
        "num_frames": pred.num_frames,
        "display_frames": disp,
        "frame_indices": [int(i) for i in video.frame_indices],
        "fps": float(video.fps or 5.0),
        "mask_size": [pred.height, pred.width],
        "frame_size": [dh, dw],
        "frames": frames,
        "depth_frames": depth_frames,
        "objects": objects,
    }
    title = title or f"psg4d report: {pred.video_id or video.video_id or 'video'}"
    n_gt = "" if gt is None else f", {len(gt.relations)} GT triplets"
    subtitle = (
        f"{pred.num_frames} frames, {pred.height}x{pred.width} masks, {len(pred.objects)} objects, "
        f"{len(pred.relations)} predicted relations (top {min(top_k, len(pred.relations))} shown){n_gt}"
    )
    legend_status = "".join(
        f"<span class='st'><span class='swatch' style='background:{STATUS_COLOURS[s]}'></span>{s}</span>"
        for s in ((HIT, FALSE_POSITIVE, MISS) if gt is not None else (PREDICTED,))
    ) + (f"<span class='st'><span class='swatch' style='background:{GT_BAR_COLOUR}'></span>GT span</span>"
         if gt is not None else "")
    template = resources.files("psg4d.viz").joinpath("templates/report.html").read_text(encoding="utf-8")
    data_json = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    replacements = {
        "__TITLE__": html.escape(title),
        "__SUBTITLE__": html.escape(subtitle),
        "__LEGEND__": legend_html(pred, colours),
        "__GRAPH_SVG__": graph_svg(pred, shown_rel, colours),
        "__TIMELINE_SVG__": timeline_svg(rows, pred.num_frames, colours, gt is not None),
        "__STATUS_LEGEND__": legend_status,
        "__CHAIN__": chain_html(pred),
        "__METRICS__": metrics_table(metrics, summary if gt is not None else None) or "<p><em>no metrics given</em></p>",
        "__DATA_JSON__": data_json,
    }
    # one pass, so user text that happens to contain a placeholder name is never substituted
    pattern = re.compile("|".join(re.escape(k) for k in replacements))
    return pattern.sub(lambda m: replacements[m.group(0)], template)


def write_report(path: str | Path, pred: SceneGraph4D, video: Video4D, **kwargs: Any) -> Path:
    """:func:`render_report` written atomically to ``path``."""
    path = Path(path)
    atomic_write_text(path, render_report(pred, video, **kwargs))
    return path
