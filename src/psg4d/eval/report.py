"""Turning the metric's sums into labelled numbers: result blocks and the printed table.

The key names are documented in :mod:`psg4d.eval.metric`; this module only
computes them from the sums (``recall_block``) and lays them out
(``summary_table``, with :mod:`psg4d.eval.segmentation`'s numbers when the result has them;
``unmapped_warning``, the words for predicted labels outside the vocabulary).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

#: result-key prefix of each test, in the order of :data:`psg4d.eval.video.KINDS`
KIND_PREFIX = ("", "weak ", "pair ")
#: unmapped labels named in the warning (the counts cover all of them)
MAX_NAMED = 10


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def unmapped_counts(labels: int | None, things: int | None, kind: str, *, adjective: str = "") -> str:
    """``"2 object labels (8 objects)"``: distinct labels, then the predicted objects (or relations)
    that carry them; the counts differ, and both matter (one odd label on every object scores them
    all as wrong)."""
    thing = "object" if kind == "object" else "relation"
    noun = f"{adjective} {kind} label" if adjective else f"{kind} label"
    return f"{_n(labels or 0, noun)} ({_n(things or 0, thing)})"


def unmapped_warning(*, objects: int, predicates: int, labels: Sequence[str], label_map_given: bool) -> str | None:
    """The warning for predicted labels outside the ground truth's vocabulary (None when there are
    none). ``objects``/``predicates``: the predicted objects and relations carrying them; ``labels``:
    each distinct label, ``"object:<label>"`` or ``"predicate:<label>"``. A label map that was given
    left them unmapped, so the advice to give one is only for when none was."""
    counts, named = [], []
    for kind, things in (("object", objects), ("predicate", predicates)):
        if not things:
            continue
        mine = sorted(e.split(":", 1)[1] for e in labels if e.startswith(f"{kind}:"))
        counts.append(unmapped_counts(len(mine), things, kind, adjective="" if counts else "predicted"))
        more = ", ..." if len(mine) > MAX_NAMED else ""
        named.append(f"{kind} " + ", ".join(repr(x) for x in mine[:MAX_NAMED]) + more)
    if not counts:
        return None
    one = len(counts) == 1 and counts[0].startswith("1 ")
    advice = (f"the label map given leaves {'it' if one else 'them'} unmapped" if label_map_given
              else "give a label map, --label-map auto or MAP.json, to map free text onto it")
    verbs = "is not in the ground truth's vocabulary and scores" if one else \
        "are not in the ground truth's vocabulary and score"
    return f"{' and '.join(counts)} {verbs} as wrong ({advice}): {'; '.join(named)}"


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
        parts = [unmapped_counts(um.get(f"distinct_{k}s"), um[f"{k}s"], k) for k in ("object", "predicate")
                 if um[f"{k}s"] is not None]  # None: no vocabulary to check that kind against
        lines.append(f"unmapped predicted labels: {', '.join(parts)}")
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
