"""One video's prediction and ground truth, checked and turned into arrays.

Both protocols score the same things: the ranked candidate triplets (cut to
the largest K), the ground-truth relations, which candidate/GT pairs agree on
all three labels, and the per-frame overlaps of the tubes involved.
:func:`prepare_video` builds them once per video (:class:`PreparedVideo`); the
protocols (:mod:`psg4d.eval.pvsg`, :mod:`psg4d.eval.volumetric`) are then
array arithmetic on it.

To score with and without the graph constraint in one pass, :func:`candidate_views`
gives the union of both candidate lists and the positions of each list in it; the
protocols score every (candidate, GT) pair once and then read each list off it
(:func:`view_ranks`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from psg4d.data.schema import MaskTube, ObjectTrack, Relation, SceneGraph4D
from psg4d.errors import DataError
from psg4d.eval.geometry import TubeOverlap, span_masks, tube_overlaps
from psg4d.eval.labelmap import IDENTITY, LabelMap, normalize_label

#: rank given to a GT relation that no candidate hits
NO_HIT = np.iinfo(np.int64).max

#: the tests a GT relation can pass, in the order of the ``kind`` axis of the protocols' view ranks:
#: ``strict`` (the protocol's rules), ``weak`` (a lower vIoU threshold), ``pair`` (any predicate)
KINDS = ("strict", "weak", "pair")


@dataclass
class PreparedVideo:
    """Arrays for one video. ``C`` candidates (rank order), ``R`` GT relations, ``T`` frames.

    ``cand_sub``/``cand_obj`` index rows of ``overlap`` (predicted tubes),
    ``gt_sub``/``gt_obj`` its columns (GT tubes). ``label_match[c, r]``: the
    candidate's subject category, object category and predicate all equal the
    GT relation's; ``pair_match[c, r]``: subject and object categories equal (any predicate).
    """

    video_id: str
    num_frames: int
    overlap: TubeOverlap
    cand_sub: np.ndarray
    cand_obj: np.ndarray
    cand_frames: np.ndarray
    gt_sub: np.ndarray
    gt_obj: np.ndarray
    gt_frames: np.ndarray
    gt_predicates: list[str]
    label_match: np.ndarray
    pair_match: np.ndarray
    unmapped_objects: int | None = None
    unmapped_predicates: int | None = None
    checked_objects: int = 0
    checked_predicates: int = 0
    unmapped_examples: set[str] = field(default_factory=set)


def _check_pair(pred: SceneGraph4D, gt: SceneGraph4D, *, validated: bool = False) -> None:
    vid = gt.video_id
    where = f"prediction for video {vid!r}"
    if pred.video_id != vid:
        raise DataError(where, f"prediction is for video {pred.video_id!r}")
    if pred.num_frames != gt.num_frames:
        raise DataError(where, f"prediction has {pred.num_frames} frames, the ground truth has {gt.num_frames}")
    if (pred.height, pred.width) != (gt.height, gt.width):
        raise DataError(
            where, f"prediction is {pred.height}x{pred.width}, the ground truth is {gt.height}x{gt.width}"
        )
    # validate() names tubes whose length differs from the video, NaN scores and dangling ids
    if not validated:
        pred.validate(where)
    require_tubes(pred, where)


def require_tubes(pred: SceneGraph4D, where: str) -> None:
    """DataError for an object in a relation without a mask tube: it would score as an empty mask,
    so a prediction file that lost its ``tube`` keys would lower recall without a word."""
    objs = pred.object_by_id()
    for i, r in enumerate(pred.relations):
        for oid in (r.subject_id, r.object_id):
            if oid in objs and objs[oid].tube is None:
                raise DataError(where, f"relations[{i}]: object {oid} has no 'tube' (its mask tube)")


def candidate_list(pred: SceneGraph4D, *, max_k: int, graph_constraint: bool) -> list[Relation]:
    """The ranked candidates that can count at any K: rank by score (stable), optionally keep only
    the best predicate per (subject, object) pair, cut to ``max_k``."""
    ranked = pred.ranked()
    if graph_constraint:
        seen: set[tuple[int, int]] = set()
        kept = []
        for r in ranked:
            key = (r.subject_id, r.object_id)
            if key not in seen:
                seen.add(key)
                kept.append(r)
        ranked = kept
    return ranked[:max_k]


def candidate_views(pred: SceneGraph4D, *, max_k: int) -> tuple[list[Relation], tuple[np.ndarray, np.ndarray]]:
    """The ranked candidates that can count at any K with or without the graph constraint, and
    where each list lies in them: ``(free, constrained)``, int64 positions in rank order, such
    that ``[cands[i] for i in free] == candidate_list(pred, max_k=max_k, graph_constraint=False)``
    and likewise ``constrained`` with ``graph_constraint=True``."""
    kept: list[Relation] = []
    free: list[int] = []
    constrained: list[int] = []
    seen: set[tuple[int, int]] = set()
    for i, r in enumerate(pred.ranked()):
        key = (r.subject_id, r.object_id)
        in_free = i < max_k
        in_gc = key not in seen and len(constrained) < max_k
        seen.add(key)
        if not (in_free or in_gc):
            if not in_free and len(constrained) >= max_k:
                break  # both lists are full
            continue
        if in_free:
            free.append(len(kept))
        if in_gc:
            constrained.append(len(kept))
        kept.append(r)
    return kept, (np.asarray(free, dtype=np.int64), np.asarray(constrained, dtype=np.int64))


def view_ranks(cand: np.ndarray, view: np.ndarray, num_candidates: int) -> tuple[np.ndarray, np.ndarray]:
    """For (candidate, GT) pairs with candidates ``cand`` (positions in the union): which of them are
    in ``view``, and their rank in it. Views are in rank order, so pairs keep their order."""
    pos = np.full(num_candidates, -1, dtype=np.int64)
    pos[view] = np.arange(len(view), dtype=np.int64)
    r = pos[cand]
    keep = r >= 0
    return keep, r[keep]


def prepare_video(
    pred: SceneGraph4D | None,
    gt: SceneGraph4D,
    *,
    max_k: int,
    graph_constraint: bool = False,
    label_map: LabelMap = IDENTITY,
    object_vocab: set[str] | None = None,
    predicate_vocab: set[str] | None = None,
    candidates: list[Relation] | None = None,
    validated: bool = False,
) -> PreparedVideo:
    """Check ``pred`` against ``gt`` (raising :class:`DataError` naming the video) and build the arrays.

    ``pred=None`` (no prediction for this video) gives zero candidates. Vocabularies
    (normalised labels) decide which predicted labels count as *unmapped*; ``None``
    means unknown, and nothing is counted. ``candidates``: the ranked relations of ``pred`` to score
    (e.g. from :func:`candidate_views`) instead of ``candidate_list(pred, max_k, graph_constraint)``.
    ``validated``: ``pred`` and ``gt`` passed ``SceneGraph4D.validate`` already (not checked again).
    """
    T = gt.num_frames
    gt_where = f"ground truth for video {gt.video_id!r}"
    if not validated:
        gt.validate(gt_where)
    gt_objs = gt.object_by_id()
    gt_cols = _gt_tube_columns(gt, gt_objs, gt_where)
    gt_rels = gt.relations

    cands: list[Relation] = []
    rows: dict[int, int] = {}
    labels = _LabelCheck.nothing_checked(object_vocab, predicate_vocab)
    pred_tubes: list[MaskTube | None] = []
    if pred is not None:
        _check_pair(pred, gt, validated=validated)
        labels = _check_labels(pred, label_map, object_vocab, predicate_vocab)
        cands = (
            candidate_list(pred, max_k=max_k, graph_constraint=graph_constraint)
            if candidates is None
            else list(candidates)
        )
        rows = _candidate_rows(cands)
        pred_objs = pred.object_by_id()
        pred_tubes = [pred_objs[i].tube for i in rows]

    overlap = tube_overlaps(pred_tubes, [gt_objs[i].tube for i in gt_cols], T)
    gt_predicates = [normalize_label(r.predicate) for r in gt_rels]
    label_match, pair_match = _label_agreement(gt, gt_objs, gt_predicates, cands, labels.object_labels, label_map)

    return PreparedVideo(
        video_id=gt.video_id,
        num_frames=T,
        overlap=overlap,
        cand_sub=np.array([rows[r.subject_id] for r in cands], dtype=np.int64),
        cand_obj=np.array([rows[r.object_id] for r in cands], dtype=np.int64),
        cand_frames=span_masks([r.spans for r in cands], T),
        gt_sub=np.array([gt_cols[r.subject_id] for r in gt_rels], dtype=np.int64),
        gt_obj=np.array([gt_cols[r.object_id] for r in gt_rels], dtype=np.int64),
        gt_frames=span_masks([r.spans for r in gt_rels], T),
        gt_predicates=gt_predicates,
        label_match=label_match,
        pair_match=pair_match,
        unmapped_objects=labels.unmapped_objects,
        unmapped_predicates=labels.unmapped_predicates,
        checked_objects=labels.checked_objects,
        checked_predicates=labels.checked_predicates,
        unmapped_examples=labels.examples,
    )


def _gt_tube_columns(gt: SceneGraph4D, gt_objs: dict[int, ObjectTrack], gt_where: str) -> dict[int, int]:
    """GT object id -> its column of the overlap arrays, for each object in a GT relation (first
    mention first); DataError for a relation naming a missing object or one without a tube."""
    gt_cols: dict[int, int] = {}
    for i, r in enumerate(gt.relations):
        for oid in (r.subject_id, r.object_id):
            if oid not in gt_objs:
                raise DataError(gt_where, f"relations[{i}] refers to object {oid}, which does not exist")
            if gt_objs[oid].tube is None:
                raise DataError(gt_where, f"object {oid} is in a relation but has no mask tube")
            gt_cols.setdefault(oid, len(gt_cols))
    return gt_cols


def _candidate_rows(cands: list[Relation]) -> dict[int, int]:
    """Predicted object id -> its row of the overlap arrays, for each object in a candidate."""
    rows: dict[int, int] = {}
    for r in cands:
        rows.setdefault(r.subject_id, len(rows))
        rows.setdefault(r.object_id, len(rows))
    return rows


@dataclass
class _LabelCheck:
    """The predicted labels after the label map, and how many fall outside the vocabularies."""

    object_labels: dict[int, str]  # predicted object id -> its mapped category
    # None only where there is no vocabulary to check against
    unmapped_objects: int | None
    unmapped_predicates: int | None
    checked_objects: int = 0
    checked_predicates: int = 0
    examples: set[str] = field(default_factory=set)

    @classmethod
    def nothing_checked(cls, object_vocab: set[str] | None, predicate_vocab: set[str] | None) -> "_LabelCheck":
        """A video without a prediction: nothing unmapped."""
        return cls(object_labels={}, unmapped_objects=None if object_vocab is None else 0,
                   unmapped_predicates=None if predicate_vocab is None else 0)


def _check_labels(pred: SceneGraph4D, label_map: LabelMap, object_vocab: set[str] | None,
                  predicate_vocab: set[str] | None) -> _LabelCheck:
    """Map every predicted label and count those outside the vocabularies (given ones only)."""
    out = _LabelCheck.nothing_checked(object_vocab, predicate_vocab)
    for o in pred.objects:
        out.object_labels[o.object_id] = label_map.object(o.majority_category())
    pred_pred = [label_map.predicate(r.predicate) for r in pred.relations]
    if object_vocab is not None:
        bad = [o for o in pred.objects if out.object_labels[o.object_id] not in object_vocab]
        out.unmapped_objects = len(bad)
        out.checked_objects = len(pred.objects)
        out.examples.update(f"object:{o.majority_category()}" for o in bad)
    if predicate_vocab is not None:
        bad_p = [r.predicate for r, p in zip(pred.relations, pred_pred) if p not in predicate_vocab]
        out.unmapped_predicates = len(bad_p)
        out.checked_predicates = len(pred.relations)
        out.examples.update(f"predicate:{p}" for p in bad_p)
    return out


def _label_agreement(gt: SceneGraph4D, gt_objs: dict[int, ObjectTrack], gt_predicates: list[str], cands: list[Relation],
                     pred_label: dict[int, str], label_map: LabelMap) -> tuple[np.ndarray, np.ndarray]:
    """``label_match [C, R]`` (subject, predicate and object agree) and ``pair_match [C, R]``
    (subject and object categories agree) of the candidates against the GT relations."""
    # labels interned to ints so the [C, R] agreement test is three integer comparisons
    codes: dict[str, int] = {}

    def code(s: str) -> int:
        return codes.setdefault(s, len(codes))

    gt_rels = gt.relations
    g_lab = np.array(
        [
            (code(normalize_label(gt_objs[r.subject_id].majority_category())), code(p),
             code(normalize_label(gt_objs[r.object_id].majority_category())))
            for r, p in zip(gt_rels, gt_predicates)
        ],
        dtype=np.int64,
    ).reshape(len(gt_rels), 3)  # [R, 3]
    c_lab = np.array(
        [
            (code(pred_label[r.subject_id]), code(label_map.predicate(r.predicate)), code(pred_label[r.object_id]))
            for r in cands
        ],
        dtype=np.int64,
    ).reshape(len(cands), 3)  # [C, 3]
    label_match = (c_lab[:, None, :] == g_lab[None, :, :]).all(-1)
    # columns 0 and 2: subject and object category
    pair_match = (c_lab[:, None, ::2] == g_lab[None, :, ::2]).all(-1)
    return label_match, pair_match
