"""Zero-shot subsets of the ground truth: which GT relations zR@K is computed on.

A :class:`ZeroShot` picks GT relations by their labels (subject category,
predicate, object category; all compared after :func:`normalize_label`), in one
of three ways:

* ``seen_triplets``: relations whose triplet is *not* in the set (the usual
  zero-shot recall: triplets never seen in training);
* ``seen_categories``: relations whose subject or object category is *not* in
  the set (an object class never seen in training);
* ``novel_categories``: relations whose subject or object category *is* in the
  set (relations involving any of these categories, e.g. held-out classes).

:meth:`ZeroShot.from_graphs` derives the first two from training graphs;
:func:`load_zero_shot` reads those graphs from a file or dataset folder (the
``--zero-shot-train`` option of ``psg4d eval``). The metric
(:class:`psg4d.eval.metric.SceneGraphRecall`) counts the subset's GT relations and
hits beside the full ones, as additive sums.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from psg4d.data.schema import SceneGraph4D
from psg4d.errors import ConfigError
from psg4d.eval.labelmap import normalize_label

log = logging.getLogger(__name__)

#: how ``--zero-shot`` derives the subset from the training graphs
ZERO_SHOT_MODES = ("triplets", "categories")

Triplet = tuple[str, str, str]


def _labels(names: Iterable[str], what: str) -> frozenset[str]:
    # a bare string would silently become a set of its characters
    if isinstance(names, str):
        raise ConfigError(f"{what} must be a collection of labels, got the string {names!r}")
    return frozenset(normalize_label(n) for n in names)


def _triplets(items: Iterable[Triplet]) -> frozenset[Triplet]:
    if isinstance(items, str):
        raise ConfigError(f"seen_triplets must be a collection of (subject, predicate, object), got {items!r}")
    out = set()
    for t in items:
        if isinstance(t, str) or len(t) != 3:
            raise ConfigError(f"seen_triplets holds (subject, predicate, object) label triples, got {t!r}")
        out.add((normalize_label(t[0]), normalize_label(t[1]), normalize_label(t[2])))
    return frozenset(out)


@dataclass(frozen=True)
class ZeroShot:
    """The zero-shot subset of GT relations; give exactly one of the three fields (labels are
    normalised on construction). Triplets are ``(subject category, predicate, object category)``."""

    seen_triplets: frozenset[Triplet] | None = None
    seen_categories: frozenset[str] | None = None
    novel_categories: frozenset[str] | None = None

    def __post_init__(self) -> None:
        given = [n for n in ("seen_triplets", "seen_categories", "novel_categories") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ConfigError(
                "ZeroShot needs exactly one of seen_triplets, seen_categories or novel_categories"
                + (f", got {', '.join(given)}" if given else "")
            )
        # frozen: normalised copies go in through object.__setattr__
        if self.seen_triplets is not None:
            object.__setattr__(self, "seen_triplets", _triplets(self.seen_triplets))
        if self.seen_categories is not None:
            object.__setattr__(self, "seen_categories", _labels(self.seen_categories, "seen_categories"))
        if self.novel_categories is not None:
            object.__setattr__(self, "novel_categories", _labels(self.novel_categories, "novel_categories"))

    @classmethod
    def from_graphs(cls, graphs: Iterable[SceneGraph4D], *, by: str = "triplets") -> "ZeroShot":
        """The subset *unseen* in ``graphs`` (a training split): ``by="triplets"``, GT relations whose
        triplet no training relation has; ``by="categories"``, GT relations whose subject or object
        category no training object has. Categories are the objects' majority categories, as scored."""
        if by not in ZERO_SHOT_MODES:
            raise ConfigError(f"zero-shot mode must be one of {', '.join(ZERO_SHOT_MODES)}, got {by!r}")
        triplets: set[Triplet] = set()
        categories: set[str] = set()
        for g in graphs:
            cats = {o.object_id: normalize_label(o.majority_category()) for o in g.objects}
            categories.update(cats.values())
            if by == "triplets":
                for r in g.relations:
                    if r.subject_id in cats and r.object_id in cats:
                        triplets.add((cats[r.subject_id], normalize_label(r.predicate), cats[r.object_id]))
        if by == "triplets":
            return cls(seen_triplets=frozenset(triplets))
        return cls(seen_categories=frozenset(categories))

    def describe(self) -> str:
        """One line for tables and the JSON result."""
        if self.seen_triplets is not None:
            return f"triplets unseen in training ({len(self.seen_triplets)} seen)"
        if self.seen_categories is not None:
            return f"subject or object category unseen in training ({len(self.seen_categories)} seen)"
        names = sorted(self.novel_categories or ())
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        return f"subject or object in {len(names)} novel categories ({shown})"

    def triplet_in(self, subject: str, predicate: str, obj: str) -> bool:
        """Whether a GT relation with these (normalised) labels is in the subset."""
        if self.seen_triplets is not None:
            return (subject, predicate, obj) not in self.seen_triplets
        if self.seen_categories is not None:
            return subject not in self.seen_categories or obj not in self.seen_categories
        novel = self.novel_categories or frozenset()
        return subject in novel or obj in novel

    def mask(self, gt: SceneGraph4D) -> np.ndarray:
        """bool ``[len(gt.relations)]``: which GT relations are in the subset (``gt`` already validated)."""
        cats = {o.object_id: normalize_label(o.majority_category()) for o in gt.objects}
        rels = gt.relations
        return np.fromiter(
            (self.triplet_in(cats[r.subject_id], normalize_label(r.predicate), cats[r.object_id]) for r in rels),
            dtype=bool,
            count=len(rels),
        )


def load_zero_shot(path: Path, *, split: str | None = None, by: str = "triplets") -> ZeroShot:
    """The zero-shot subset unseen in the training graphs at ``path``: a scene-graph file, or a
    dataset folder (its ``split``, default ``train``)."""
    from psg4d.eval.sources import load_ground_truth

    if by not in ZERO_SHOT_MODES:
        raise ConfigError(f"--zero-shot must be one of {', '.join(ZERO_SHOT_MODES)}, got {by!r}")
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: zero-shot training graphs not found")
    if not path.is_dir() and split is not None:
        raise ConfigError(
            f"--zero-shot-split selects a split of a dataset folder, but --zero-shot-train {path} is a scene-graph file"
        )
    graphs, _ = load_ground_truth(path, split or "train", split_is_for_gt=False)
    counted: list[int] = [0, 0]

    def tally(gs: Iterable[SceneGraph4D]) -> Iterable[SceneGraph4D]:
        for g in gs:
            counted[0] += 1
            counted[1] += len(g.relations)
            yield g

    zs = ZeroShot.from_graphs(tally(graphs), by=by)
    if counted[0] == 0:
        raise ConfigError(f"{path}: no training scene graphs to tell seen from unseen (zero-shot)")
    log.info("zero-shot subset from %d training graphs (%d relations): %s", counted[0], counted[1], zs.describe())
    return zs
