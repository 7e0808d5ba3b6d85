"""Dataset statistics for ``psg4d data inspect``: per split, the number of videos,
frames, objects, relations (and their spans) and a predicate histogram.

Only scene graphs are read, never frames. Readers whose ``read_graph`` takes
``with_masks`` (all built-in ones) are asked for graphs without mask tubes, so
formats that keep masks in per-frame files are counted from their index alone.

Relations a reader dropped the way the dataset's own loader does (a graph's
``meta["relations_dropped_<reason>"]`` counts, e.g. PVSG's unknown predicates)
are summed per reason and reported under the table.
"""

from __future__ import annotations

import inspect as _pyinspect
from collections import Counter
from typing import Any

from tqdm import tqdm

from psg4d.data.readers.base import DatasetReader
from psg4d.data.schema import SceneGraph4D


def _graph_reader(reader: DatasetReader):
    if "with_masks" in _pyinspect.signature(reader.read_graph).parameters:
        return lambda vid: reader.read_graph(vid, with_masks=False)
    return reader.read_graph


DROPPED_PREFIX = "relations_dropped_"


def _empty() -> dict[str, Any]:
    return {
        "videos": 0, "frames": 0, "objects": 0, "relations": 0, "spans": 0,
        "predicates": Counter(), "dropped_relations": Counter(),
    }


def _add(stats: dict[str, Any], g: SceneGraph4D) -> None:
    stats["videos"] += 1
    stats["frames"] += g.num_frames
    stats["objects"] += len(g.objects)
    stats["relations"] += len(g.relations)
    stats["spans"] += sum(len(r.spans) for r in g.relations)
    stats["predicates"].update(r.predicate for r in g.relations)
    for key, n in g.meta.items():
        if key.startswith(DROPPED_PREFIX) and n:
            stats["dropped_relations"][key[len(DROPPED_PREFIX):]] += int(n)


def inspect_dataset(reader: DatasetReader, *, splits: list[str] | None = None, progress: bool = False) -> dict:
    """Counts per split and over the whole dataset (a video in two splits counts once in ``all``).

    Returns ``{"format", "root", "object_vocab", "predicate_vocab", "splits": {name: stats},
    "all": stats}``; ``stats`` has ``videos, frames, objects, relations, spans`` and
    ``predicates`` (name -> count, most frequent first) and ``dropped_relations``
    (reason -> count of relations the reader dropped).
    """
    read = _graph_reader(reader)
    names = splits if splits is not None else reader.splits
    per_split: dict[str, dict[str, Any]] = {}
    total = _empty()
    seen: set[str] = set()
    jobs = [(s, v) for s in names for v in reader.video_ids(s)]
    for s in names:
        per_split[s] = _empty()
    for s, vid in tqdm(jobs, desc="inspect", unit="video", disable=not progress):
        g = read(vid)
        _add(per_split[s], g)
        if vid not in seen:
            seen.add(vid)
            _add(total, g)

    def finish(st: dict[str, Any]) -> dict[str, Any]:
        return {**st, "predicates": dict(st["predicates"].most_common()), "dropped_relations": dict(st["dropped_relations"])}

    return {
        "format": reader.format_name,
        "root": str(reader.root),
        "object_vocab": len(reader.object_vocab),
        "predicate_vocab": len(reader.predicate_vocab),
        "splits": {k: finish(v) for k, v in per_split.items()},
        "all": finish(total),
    }


COLUMNS = ("videos", "frames", "objects", "relations", "spans")


def format_inspection(summary: dict, *, top_predicates: int = 15) -> str:
    """A plain-text table of :func:`inspect_dataset`'s result."""
    lines = [
        f"dataset {summary['root']} (format {summary['format']}): "
        f"{summary['object_vocab']} object classes, {summary['predicate_vocab']} predicates",
    ]
    rows = [("split", *COLUMNS)]
    # one row per split; the total only where it adds to them
    totals = [("all", summary["all"])] if len(summary["splits"]) > 1 else []
    for name, st in [*summary["splits"].items(), *totals]:
        rows.append((name, *(str(st[c]) for c in COLUMNS)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    dropped = summary["all"].get("dropped_relations") or {}
    if dropped:
        lines.append("")
        reasons = ", ".join(f"{n} ({reason.replace('_', ' ')})" for reason, n in dropped.items())
        lines.append(f"relations dropped as the dataset's own loader drops them: {reasons}")
    preds = summary["all"]["predicates"]
    if preds:
        total = sum(preds.values())
        lines.append("")
        lines.append(f"predicates (all splits, top {min(top_predicates, len(preds))} of {len(preds)}):")
        w = max(len(p) for p in list(preds)[:top_predicates])
        for p, n in list(preds.items())[:top_predicates]:
            lines.append(f"  {p.ljust(w)}  {n:>7d}  {100.0 * n / total:5.1f}%")
    return "\n".join(lines)
