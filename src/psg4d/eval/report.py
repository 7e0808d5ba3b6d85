"""Turning the metric's sums into labelled numbers: result blocks and the printed table.

The key names are documented in :mod:`psg4d.eval.metric`; this module only
computes them from the sums (``recall_block``) and lays them out
(``summary_table``, with :mod:`psg4d.eval.segmentation`'s numbers when the result has them).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

#: result-key prefix of each test, in the order of :data:`psg4d.eval.video.KINDS`
KIND_PREFIX = ("", "weak ", "pair ")


def _pooled(hits: np.ndarray, gt: np.ndarray) -> float:
    total = int(gt.sum())
    return 100.0 * float(hits.sum()) / total if total else 0.0


def _mean(hits: np.ndarray, gt: np.ndarray) -> float:
    valid = gt > 0
    per = hits[valid] / gt[valid]
    return 100.0 * float(per.mean()) if per.size else 0.0


def recall_block(hits: np.ndarray, gt: np.ndarray, ks: Sequence[int], *, zero_shot: bool) -> dict[str, float]:
    """Recalls of one candidate list. ``hits`` int64 ``[P, subset, kind, K]`` and ``gt`` ``[P, subset]``
    (subset 0: all GT relations, 1: the zero-shot subset; kinds strict, weak, pair)."""
    out: dict[str, float] = {}
    for kind, prefix in enumerate(KIND_PREFIX):
        for j, k in enumerate(ks):
            out[f"{prefix}R@{k}"] = _pooled(hits[:, 0, kind, j], gt[:, 0])
        if prefix != "pair ":  # a mean over predicates says little when the predicate is not scored
            for j, k in enumerate(ks):
                out[f"{prefix}mR@{k}"] = _mean(hits[:, 0, kind, j], gt[:, 0])
    if zero_shot:
        for kind, prefix in enumerate(KIND_PREFIX):
            for j, k in enumerate(ks):
                out[f"{prefix}zR@{k}"] = _pooled(hits[:, 1, kind, j], gt[:, 1])
    return out


def summary_table(result: Mapping[str, Any]) -> str:
    """A fixed-width text table: one row per recall and candidate list, columns R@K then mR@K.

    The row marked ``*`` is the one the plain ``R@K`` / ``mR@K`` keys hold.
    """
    ks = result["ks"]
    gc = bool(result.get("settings", {}).get("graph_constraint", False))
    weak_t = result.get("settings", {}).get("weak_viou_threshold")
    zs = result.get("zero_shot")
    label_w = 44
    head = f"{result['protocol'] + ' protocol':<{label_w}}" + "".join(f"{'R@' + str(k):>9}" for k in ks)
    head += "".join(f"{'mR@' + str(k):>9}" for k in ks)
    families = [("", "triplet (R, mR)"), ("weak ", f"weak, vIoU >= {weak_t:g}" if weak_t else "weak"),
                ("pair ", "pair, any predicate")]
    if zs:
        families += [("z", "zero-shot zR"), ("weak z", "zero-shot weak zR"), ("pair z", "zero-shot pair zR")]
    # a result saved before the blocks existed has only the plain keys, for its own candidate list
    blocks = [(b, result[b]) for b in ("no_graph_constraint", "graph_constraint") if result.get(b)]
    blocks = blocks or [("graph_constraint" if gc else "no_graph_constraint", result)]
    lines = [head]
    for prefix, name in families:
        for block, numbers in blocks:
            main = (block == "graph_constraint") == gc and prefix == ""
            label = f"{name:<24}{block.replace('_', ' ')}{' *' if main else ''}"
            row = f"{label:<{label_w}}"
            for metric in ("R", "mR"):
                for k in ks:
                    v = numbers.get(f"{prefix}{metric}@{k}")
                    row += f"{v:>9.2f}" if v is not None else f"{'-':>9}"
            lines.append(row)
    lines.append("* = the plain R@K / mR@K keys; the JSON blocks 'no_graph_constraint' and 'graph_constraint'"
                 " hold every row")
    lines.append("")
    lines.append(
        f"videos {result['num_videos']}  GT relations {result['num_gt_relations']}"
        f"  missing predictions {result['num_missing_predictions']}"
    )
    if zs:
        lines.append(f"zero-shot subset: {zs['num_gt_relations']} GT relations, {zs['subset']}")
    um = result["unmapped_labels"]
    if um["objects"] or um["predicates"]:
        lines.append(f"unmapped predicted labels: objects {um['objects']}, predicates {um['predicates']}")
    if result.get("segmentation"):
        lines.extend(segmentation_lines(result["segmentation"]))
    return "\n".join(lines)


def _num(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def segmentation_lines(seg: Mapping[str, Any]) -> list[str]:
    """The table's lines for :mod:`psg4d.eval.segmentation`'s result (``{"tube": ..., "panoptic": ...}``)."""
    t, p = seg["tube"], seg["panoptic"]
    tube_line = (
        f"segmentation: mean tube vIoU {_num(t['mean_tube_viou'], '.2f')}"
        f" (recall@0.5 {_num(t['recall@0.5'], '.2f')}, class-correct {_num(t['class_recall@0.5'], '.2f')};"
        f" things {_num(t['mean_tube_viou_things'], '.2f')}, stuff {_num(t['mean_tube_viou_stuff'], '.2f')})"
        f" over {t['num_gt_objects']} GT objects"
    )
    pq_line = (
        f"panoptic: PQ {_num(p['PQ'], '.1f')} (SQ {_num(p['SQ'], '.1f')}, RQ {_num(p['RQ'], '.1f')};"
        f" things {_num(p['PQ_things'], '.1f')}, stuff {_num(p['PQ_stuff'], '.1f')})"
        f" over {p['num_categories']} categories, per frame"
    )
    return [tube_line, pq_line]
