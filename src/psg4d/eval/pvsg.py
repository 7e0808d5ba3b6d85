"""The ``pvsg`` protocol: OpenPVSG's relation evaluator, which PSG4D reuses for its published numbers.

Reproduced from ``tools/rel_test_full.py`` and ``utils/rel_metrics.py`` of
OpenPVSG (LilyDaytoy/OpenPVSG), including its leniencies:

* Candidates are ranked by score over the whole video with no graph constraint:
  every (pair, predicate) is its own entry.
* A predicted tube's category is the majority vote of its per-frame categories
  (``Counter.most_common`` over the tube's frames there; ties go to the first
  seen, as :meth:`ObjectTrack.majority_category` does).
* For each GT relation ``(s, o, r, spans)`` the ranked list is walked in order;
  a candidate is *tested* only when its subject category, object category and
  predicate equal the GT's. For a tested candidate, over the frames of the GT
  spans (inclusive):

  - ``G``: frames where both the GT subject and the GT object masks are non-empty;
  - ``H``: frames where both predicted tubes have a mask, and the subject and
    the object mask IoU with their GT are both ``>= 0.5``;
  - ``P``: frames inside the candidate's predicted spans;

  and ``viou = |H∩P∩G| / (|H∩P| + |G| - |H∩P∩G|)``, which is ``|H∩P| / |G|``
  because a frame with mask IoU ``>= 0.5`` has a non-empty GT mask (``H ⊆ G``).
  Predicted frames outside the GT spans cost nothing.
* The GT relation is hit at K when the first tested candidate with
  ``viou >= 0.5`` has rank (index in the full ranked list, counting candidates
  never tested) ``< K``. No one-to-one matching: one candidate may hit several
  GT relations.
* R@K pools hits over the split; mR@K averages hits/GT over predicates with at
  least one GT relation.

Details taken from the public code where the prose description is silent:

* ``|G| = 0`` (the GT pair never co-occurs inside its spans): the public
  ``calculate_iou`` returns 0 on an empty union, so such a GT relation counts
  in the denominator and can never be hit.
* Mask IoU with an empty union is 0 (``calculate_mask_iou``).
* The public loop walks every candidate; only ranks ``< K`` can count, so
  cutting the list to the largest K first gives identical numbers.
* The public evaluator also prints a "weak" recall: the same walk with
  ``viou >= 0.1``. :func:`pvsg_view_ranks` reports it (``weak``), with one
  difference: the public loop adds a weak hit for *every* tested candidate with
  ``viou >= 0.1`` up to the first strict hit, so one GT relation can count
  several times (weak recall above 100%); here a GT relation is weakly hit once,
  at the rank of the first such candidate (what the public code's commented-out
  ``weak_hit_flag`` meant). Its soft recalls (sums of vIoU) are not reproduced.
* Pair recall (``pair``, not in the public code): the same walk testing every
  candidate whose subject and object categories equal the GT's, any predicate.
* With no GT relation in the whole split the public code divides by zero;
  here R@K and mR@K are 0.

The thresholds (0.5 and 0.5) are parameters for ablations; the published
numbers use the defaults.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from psg4d.eval.video import KINDS, NO_HIT, PreparedVideo, view_ranks


def pvsg_viou(v: PreparedVideo, cand: np.ndarray, rel: np.ndarray, *, mask_iou_threshold: float = 0.5) -> np.ndarray:
    """Relation vIoU ``[M]`` of candidates ``cand[m]`` against GT relations ``rel[m]`` (the formula above)."""
    ov = v.overlap
    ps, po = v.cand_sub[cand], v.cand_obj[cand]
    gs, go = v.gt_sub[rel], v.gt_obj[rel]
    gt_frames = v.gt_frames[rel]  # [M, T]
    g = gt_frames & (ov.gt_area[gs] > 0) & (ov.gt_area[go] > 0)
    h = (
        gt_frames
        & ov.pred_present[ps]
        & ov.pred_present[po]
        & (ov.iou[ps, gs] >= mask_iou_threshold)
        & (ov.iou[po, go] >= mask_iou_threshold)
    )
    hp = h & v.cand_frames[cand]
    inter = (hp & g).sum(-1)
    union = hp.sum(-1) + g.sum(-1) - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def pvsg_hit_ranks(
    v: PreparedVideo, *, mask_iou_threshold: float = 0.5, viou_threshold: float = 0.5
) -> np.ndarray:
    """int64 ``[R]``: for each GT relation, the rank of the first tested candidate with
    ``viou >= viou_threshold``, or :data:`NO_HIT`."""
    R = len(v.gt_sub)
    ranks = np.full(R, NO_HIT, dtype=np.int64)
    cand, rel = np.nonzero(v.label_match)  # row-major: candidates in rank order
    if cand.size == 0:
        return ranks
    ok = pvsg_viou(v, cand, rel, mask_iou_threshold=mask_iou_threshold) >= viou_threshold
    # minimum rank per GT relation among the passing candidates
    np.minimum.at(ranks, rel[ok], cand[ok])
    return ranks


def pvsg_view_ranks(
    v: PreparedVideo,
    views: Sequence[np.ndarray],
    *,
    mask_iou_threshold: float = 0.5,
    viou_threshold: float = 0.5,
    weak_viou_threshold: float = 0.1,
) -> np.ndarray:
    """int64 ``[len(views), len(KINDS), R]``: per candidate list (``views[i]``, positions of
    ``v``'s candidates in rank order) and per test (:data:`KINDS`), the rank of the first passing
    candidate for each GT relation, or :data:`NO_HIT`. Each (candidate, GT) vIoU is computed once."""
    R = len(v.gt_sub)
    ranks = np.full((len(views), len(KINDS), R), NO_HIT, dtype=np.int64)
    cand, rel = np.nonzero(v.pair_match)  # a superset of label_match's pairs, row-major
    if cand.size == 0:
        return ranks
    viou = pvsg_viou(v, cand, rel, mask_iou_threshold=mask_iou_threshold)
    label = v.label_match[cand, rel]
    tests = (label & (viou >= viou_threshold), label & (viou >= weak_viou_threshold), viou >= viou_threshold)
    for i, view in enumerate(views):
        keep, rank = view_ranks(cand, view, len(v.cand_sub))
        for j, ok in enumerate(tests):
            ok = ok[keep]
            np.minimum.at(ranks[i, j], rel[keep][ok], rank[ok])
    return ranks
