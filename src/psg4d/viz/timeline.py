"""The report's triplet timeline: which predicted triplets hit the ground truth, and the SVG of it.

Hits (:func:`match_triplets`): a predicted triplet is a *hit* when its
``(subject category, predicate, object category)`` equals that of a GT triplet
and their spans overlap in at least one frame; a GT triplet that no shown
prediction hits is a *miss*. :func:`timeline_svg` draws one row per triplet,
bars over its spans, GT beside the prediction, coloured by status.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

from psg4d.data.schema import Relation, SceneGraph4D

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


def spans_attr(spans: list[tuple[int, int]]) -> str:
    """Spans as a ``data-spans`` attribute (``a-b,c-d``), what the report's script reads to highlight
    whatever is active at the current frame."""
    return ",".join(f"{a}-{b}" for a, b in spans)


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
    """Counts of the shown rows: hits, false positives, and the GT found and missed (with GT)."""
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


def status_legend_html(with_gt: bool) -> str:
    """Swatches of the statuses the timeline can show (and of the GT bars, with GT)."""
    return "".join(
        f"<span class='st'><span class='swatch' style='background:{STATUS_COLOURS[s]}'></span>{s}</span>"
        for s in ((HIT, FALSE_POSITIVE, MISS) if with_gt else (PREDICTED,))
    ) + (f"<span class='st'><span class='swatch' style='background:{GT_BAR_COLOUR}'></span>GT span</span>"
         if with_gt else "")


def timeline_svg(rows: list[TimelineRow], num_frames: int, colours: dict[int, tuple[int, int, int]],
                 with_gt: bool) -> str:
    """One row per triplet over a frame axis: its label, GT bars above the predicted ones (with GT)."""
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
            f"<g class='tl-row {row.status}' data-status='{row.status}' data-spans='{spans_attr(row.pred_spans or row.gt_spans)}'>"
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
