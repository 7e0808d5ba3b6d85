"""The ``volumetric`` protocol: strict triplet recall with tube vIoU (recommended for new work).

Differences from ``pvsg`` (:mod:`psg4d.eval.pvsg`), each closing one of its leniencies:

* Tube vIoU over the whole video: each tube is cut to its relation's span list
  (GT tube to the GT spans, predicted tube to the predicted spans) and
  ``vIoU = sum_t |GT_t ∩ P_t| / (GT volume + predicted volume - intersection)``:
  frames predicted outside the truth add to the union, so over-long spans cost.
* A candidate matches a GT triplet when the three labels are equal,
  ``min(subject vIoU, object vIoU) >= iou_threshold`` and the temporal IoU of
  the two span lists ``>= tiou_threshold``.
* Greedy one-to-one matching in rank order: each candidate takes the unmatched
  GT triplet it matches with the highest ``min(subject vIoU, object vIoU)``
  (ties: the earlier GT relation); a matched GT triplet is not available again.
* Top-K cut per video (optionally after the graph constraint, applied by
  :func:`psg4d.eval.video.candidate_list`); recall pooled over the split.

Greedy matching in rank order makes the matching of the top K a prefix of the
matching of the top ``max(K)``, so one pass gives every K: a GT triplet is hit
at K when the rank of the candidate that took it is ``< K``.

Beside the strict test, :func:`volumetric_view_ranks` runs the same matching for

* ``weak``: tube vIoU threshold lowered to ``weak_iou_threshold`` (0.1 by default,
  the threshold of ``pvsg``'s weak recall); labels and temporal IoU as strict;
* ``pair``: any predicate (subject and object categories, tube vIoU and temporal
  IoU as strict). A candidate prefers an unmatched GT relation whose predicate it
  also gets right, then the highest quality, so that a right triplet is never
  paired away to another relation of the same pair.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from psg4d.eval.geometry import overlap_tube_viou, span_iou
from psg4d.eval.video import KINDS, NO_HIT, PreparedVideo, view_ranks


def volumetric_scores(v: PreparedVideo, cand: np.ndarray, rel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For pairs ``(cand[m], rel[m])``: ``min(subject vIoU, object vIoU)`` and the span-list temporal IoU."""
    pf, gf = v.cand_frames[cand], v.gt_frames[rel]
    vs = overlap_tube_viou(v.overlap, v.cand_sub[cand], v.gt_sub[rel], pf, gf)
    vo = overlap_tube_viou(v.overlap, v.cand_obj[cand], v.gt_obj[rel], pf, gf)
    return np.minimum(vs, vo), span_iou(pf, gf)


def volumetric_hit_ranks(
    v: PreparedVideo, *, iou_threshold: float = 0.5, tiou_threshold: float = 0.5
) -> np.ndarray:
    """int64 ``[R]``: rank of the candidate matched to each GT triplet, or :data:`NO_HIT`."""
    R = len(v.gt_sub)
    ranks = np.full(R, NO_HIT, dtype=np.int64)
    cand, rel = np.nonzero(v.label_match)
    if cand.size == 0:
        return ranks
    quality, tiou = volumetric_scores(v, cand, rel)
    ok = (quality >= iou_threshold) & (tiou >= tiou_threshold)
    return _greedy(cand[ok], rel[ok], quality[ok], R)


def _greedy(cand: np.ndarray, rel: np.ndarray, quality: np.ndarray, R: int) -> np.ndarray:
    """One-to-one matching of passing (candidate, GT) pairs, given in candidate (rank) order:
    each candidate takes the unmatched GT relation of highest ``quality``. Returns ranks ``[R]``."""
    ranks = np.full(R, NO_HIT, dtype=np.int64)
    taken = np.zeros(R, dtype=bool)
    # pairs are in candidate order (np.nonzero is row-major), so one walk over the groups is rank order
    starts = np.flatnonzero(np.r_[True, cand[1:] != cand[:-1]]) if cand.size else np.zeros(0, dtype=np.int64)
    bounds = np.r_[starts, cand.size]
    for a, b in zip(bounds[:-1], bounds[1:]):
        free = ~taken[rel[a:b]]
        if not free.any():
            continue
        q = np.where(free, quality[a:b], -np.inf)
        best = int(np.argmax(q))  # first maximum = earliest GT relation among ties
        r = rel[a + best]
        taken[r] = True
        ranks[r] = cand[a]
    return ranks


def volumetric_view_ranks(
    v: PreparedVideo,
    views: Sequence[np.ndarray],
    *,
    iou_threshold: float = 0.5,
    tiou_threshold: float = 0.5,
    weak_iou_threshold: float = 0.1,
) -> np.ndarray:
    """int64 ``[len(views), len(KINDS), R]``: per candidate list (``views[i]``, positions of ``v``'s
    candidates in rank order) and per test (:data:`KINDS`), the rank of the candidate matched to
    each GT relation, or :data:`NO_HIT`. Tube vIoUs are computed once for all lists and tests."""
    R = len(v.gt_sub)
    ranks = np.full((len(views), len(KINDS), R), NO_HIT, dtype=np.int64)
    cand, rel = np.nonzero(v.pair_match)  # a superset of label_match's pairs, row-major
    if cand.size == 0:
        return ranks
    quality, tiou = volumetric_scores(v, cand, rel)
    label = v.label_match[cand, rel]
    t_ok = tiou >= tiou_threshold
    strict = t_ok & (quality >= iou_threshold)
    # quality <= 1, so +2 ranks every GT relation with the right predicate above every other
    tests = ((label & strict, quality), (label & t_ok & (quality >= weak_iou_threshold), quality),
             (strict, quality + 2.0 * label))
    for i, view in enumerate(views):
        keep, rank = view_ranks(cand, view, len(v.cand_sub))
        for j, (ok, q) in enumerate(tests):
            ok = ok[keep]
            ranks[i, j] = _greedy(rank[ok], rel[keep][ok], q[keep][ok], R)
    return ranks
