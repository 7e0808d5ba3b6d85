"""Clips played backwards: frames, tubes and relation spans reversed, predicates swapped.

A reversed clip can only be described by reading the order of its frames: "picking up" played
backwards is "putting down". Training on reversed clips (``model.time_reversal``) rewards a
model that reads time, and the reversal probe (:func:`psg4d.infer.diagnostics.reversal_probe`)
measures whether it does.

What a predicate becomes backwards is declared, per dataset family, in :data:`REVERSAL_TABLES`
(explicit, never guessed from the words): a predicate maps to itself (it looks the same either
way), to its partner, or to None (the reversed motion has no name, and the relation is dropped).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping, Sequence

import numpy as np

from psg4d.data.schema import MaskTube, Sample, SceneGraph4D, Video4D
from psg4d.data.synth.world import TIME_REVERSED_PREDICATES

# name -> {predicate: its name when played backwards, or None}
REVERSAL_TABLES: dict[str, Mapping[str, str | None]] = {
    "synthetic": TIME_REVERSED_PREDICATES,
}


def reversal_table(name: str, predicates: Sequence[str], *,
                   vocabulary: Sequence[str] | None = None) -> Mapping[str, str | None]:
    """The table ``name``, checked to cover every one of ``predicates`` (ValueError otherwise:
    a predicate the table does not declare could not be reversed truthfully). With ``vocabulary``
    (a model's predicates), a reverse outside it maps to None: the relation is left out of the
    reversed clip, since the model has no word for it."""
    if name not in REVERSAL_TABLES:
        raise ValueError(f"unknown time-reversal table {name!r}; options: {sorted(REVERSAL_TABLES)}")
    table = REVERSAL_TABLES[name]
    missing = [p for p in predicates if p not in table]
    if missing:
        raise ValueError(f"time-reversal table {name!r} does not say what {missing} become backwards")
    if vocabulary is None:
        return table
    known = set(vocabulary)
    return {p: (q if q in known else None) for p, q in table.items()}


def asymmetric_pairs(table: Mapping[str, str | None], predicates: Sequence[str]) -> dict[str, str]:
    """Each of ``predicates`` whose reverse is another one of them -> that partner."""
    kept = set(predicates)
    return {p: q for p, q in table.items() if p in kept and q is not None and q != p and q in kept}


def reverse_span(span: tuple[int, int], num_frames: int) -> tuple[int, int]:
    """Inclusive ``[a, b]`` on a ``num_frames`` timeline -> the same frames counted from the end."""
    a, b = span
    return num_frames - 1 - b, num_frames - 1 - a


def reverse_graph(graph: SceneGraph4D, table: Mapping[str, str | None]) -> SceneGraph4D:
    """``graph`` of the clip played backwards: tubes and per-frame categories reversed, each
    relation's predicate swapped by ``table`` (dropped where it maps to None) and its spans
    mirrored. A predicate missing from ``table`` is a ValueError."""
    t = graph.num_frames
    objects = []
    for o in graph.objects:
        tube = None if o.tube is None else MaskTube(height=o.tube.height, width=o.tube.width, rles=o.tube.rles[::-1])
        cats = None if o.frame_categories is None else list(o.frame_categories)[::-1]
        objects.append(replace(o, tube=tube, frame_categories=cats))
    relations = []
    for r in graph.relations:
        if r.predicate not in table:
            raise ValueError(f"{graph.video_id}: the time-reversal table does not declare {r.predicate!r}")
        pred = table[r.predicate]
        if pred is None:
            continue
        spans = sorted(reverse_span(s, t) for s in r.spans)
        relations.append(replace(r, predicate=pred, spans=spans))
    meta = dict(graph.meta)
    meta["time_reversed"] = not bool(meta.get("time_reversed", False))
    return replace(graph, objects=objects, relations=relations, meta=meta)


def reverse_video(video: Video4D) -> Video4D:
    """The frames in reverse order (``frame_indices`` still name each frame's source frame);
    copies, so the arrays stay contiguous for ``torch.from_numpy``."""
    return replace(
        video,
        rgb=np.ascontiguousarray(video.rgb[::-1]),
        depth=None if video.depth is None else np.ascontiguousarray(video.depth[::-1]),
        frame_indices=np.ascontiguousarray(np.asarray(video.frame_indices)[::-1]),
    )


def reverse_sample(sample: Sample, table: Mapping[str, str | None]) -> Sample:
    """A sample played backwards (:func:`reverse_video`, :func:`reverse_graph`)."""
    return Sample(video=reverse_video(sample.video), graph=reverse_graph(sample.graph, table), lifted=sample.lifted)


__all__ = [
    "REVERSAL_TABLES",
    "asymmetric_pairs",
    "reversal_table",
    "reverse_graph",
    "reverse_sample",
    "reverse_span",
    "reverse_video",
]
