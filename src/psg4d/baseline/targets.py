"""Training targets of the relation model: gold scene graphs mapped onto predicted tubes.

The relation model never sees gold tubes: it is trained on the tracker's output, so a gold
relation becomes a target only where both of its objects were found. :func:`match_tubes_to_gold`
assigns predicted tubes to gold objects one-to-one (same class, enough frames with a good mask);
:func:`relation_targets` turns the gold relations between matched objects into pair, predicate
and per-frame span targets, restricted to the frames where both tubes really are those objects.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from psg4d.baseline.types import TrackedTubes
from psg4d.data.masks import pairwise_mask_iou
from psg4d.data.schema import SceneGraph4D

log = logging.getLogger(__name__)


@dataclass
class TubeMatch:
    """Predicted tubes -> gold objects.

    ``gold_ids`` ``[N]`` int64: the gold ``object_id`` matched to each tube, -1 if none;
    ``matched_frames`` ``[N, T]`` bool: frames where the tube's mask has IoU > ``match_iou`` with
    its gold object's mask (all False for an unmatched tube).
    """

    gold_ids: np.ndarray
    matched_frames: np.ndarray


@dataclass
class RelationTargets:
    """One video's relation targets on its predicted tubes.

    ``pair`` ``[N, N]`` float32: 1 where the ordered tube pair (i, j) is matched to a gold
    (subject, object) pair with at least one relation of a known predicate;
    ``pairs`` ``[P, 2]`` int64: those positive pairs, sorted; ``predicates`` ``[P, R]`` float32
    multi-hot; ``spans`` ``[P, T, R]`` float32: 1 in the frames where the gold relation holds, only
    within ``span_mask``; ``span_mask`` ``[P, T]`` bool: frames matched for both tubes (the only
    frames where the span loss counts).
    """

    pair: np.ndarray
    pairs: np.ndarray
    predicates: np.ndarray
    spans: np.ndarray
    span_mask: np.ndarray

    @property
    def num_tubes(self) -> int:
        return int(self.pair.shape[0])


def _resize_nearest(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """``[T, h, w]`` bool -> ``[T, height, width]`` by nearest neighbour (pixel centres)."""
    h, w = masks.shape[1:]
    if (h, w) == (height, width):
        return masks
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.int64), w - 1)
    return masks[:, rows][:, :, cols]


def match_tubes_to_gold(tubes: TrackedTubes, gold: SceneGraph4D, class_names: list[str], *,
                        match_iou: float, min_matched_frames: float) -> TubeMatch:
    """Assign predicted tubes to gold objects one-to-one.

    A tube may match a gold object only when the class name of its label equals the object's
    ``majority_category()`` and its mask has IoU > ``match_iou`` in at least
    ``max(1, ceil(min_matched_frames * frames the gold object is present))`` frames; among the
    allowed pairs the assignment maximises the total matched frame count (Hungarian). Gold masks
    are resized (nearest) to the tubes' size; gold objects without a tube are never matched.
    Raises ``ValueError`` when the graph's frame count differs from the tubes'.
    """
    n, t = len(tubes), tubes.num_frames
    if gold.num_frames != t:
        raise ValueError(f"video {gold.video_id!r}: gold graph has {gold.num_frames} frames, tubes have {t}")
    height, width = tubes.masks.shape[2:]
    gold_ids = np.full(n, -1, np.int64)
    matched = np.zeros((n, t), bool)
    objects = [o for o in gold.objects if o.tube is not None]
    if n == 0 or not objects:
        return TubeMatch(gold_ids=gold_ids, matched_frames=matched)

    gold_masks = np.stack([_resize_nearest(o.tube.to_dense(), height, width) for o in objects])  # [K, T, H, W]
    if gold_masks.shape[1] != t:
        raise ValueError(f"video {gold.video_id!r}: a gold tube has {gold_masks.shape[1]} frames, tubes have {t}")
    # a tube's mask outside its valid frames is not its segment, whatever the array holds
    pred_masks = tubes.masks & tubes.valid[:, :, None, None]  # [N, T, H, W]
    ious = pairwise_mask_iou(pred_masks.reshape(n, t, -1), gold_masks.reshape(len(objects), t, -1),
                             dims=1)  # [N, K, T]
    hits = ious > match_iou  # [N, K, T]
    counts = hits.sum(-1)  # [N, K]

    names = [class_names[int(c)] if 0 <= int(c) < len(class_names) else None for c in tubes.labels]
    cats = [o.majority_category() for o in objects]
    # a small epsilon keeps e.g. 0.7 * 10 = 7.000000000000001 from needing 8 frames
    need = np.array([max(1, math.ceil(min_matched_frames * int(o.tube.present().sum()) - 1e-9)) for o in objects])
    same_class = np.array([[nm is not None and nm == c for c in cats] for nm in names], bool).reshape(n, len(objects))
    allowed = same_class & (counts >= need[None, :])  # [N, K]
    if not allowed.any():
        return TubeMatch(gold_ids=gold_ids, matched_frames=matched)

    # disallowed pairs cost 0 and allowed ones -count <= -1, so the optimum is the maximum-weight
    # matching over allowed pairs; zero-cost assignments are dropped below
    cost = np.where(allowed, -counts, 0).astype(np.float64)
    rows, cols = linear_sum_assignment(cost)
    for i, k in zip(rows, cols):
        if allowed[i, k]:
            gold_ids[i] = objects[k].object_id
            matched[i] = hits[i, k]
    log.debug("video %s: %d of %d tubes matched to %d gold objects", gold.video_id,
              int((gold_ids >= 0).sum()), n, len(objects))
    return TubeMatch(gold_ids=gold_ids, matched_frames=matched)


def relation_targets(match: TubeMatch, gold: SceneGraph4D, predicate_names: list[str]) -> RelationTargets:
    """Pair, predicate and span targets of the gold relations whose two objects were matched.

    Relations with a predicate outside ``predicate_names`` are ignored (a pair with only those is
    not a positive pair), as are relations of an object with itself.
    """
    n, t = match.matched_frames.shape
    r = len(predicate_names)
    pred_index = {p: k for k, p in enumerate(predicate_names)}
    tube_of = {int(g): i for i, g in enumerate(match.gold_ids) if g >= 0}

    # (i, j) -> [T, R] bool (frames where each predicate holds) and [R] bool (predicates named);
    # both are kept because a relation may name its predicate with no spans at all
    holds: dict[tuple[int, int], np.ndarray] = {}
    named: dict[tuple[int, int], np.ndarray] = {}
    for rel in gold.relations:
        k = pred_index.get(rel.predicate)
        i, j = tube_of.get(rel.subject_id), tube_of.get(rel.object_id)
        if k is None or i is None or j is None or i == j:
            continue
        frames = rel.frames()
        frames = frames[(frames >= 0) & (frames < t)]
        holds.setdefault((i, j), np.zeros((t, r), bool))[frames, k] = True
        named.setdefault((i, j), np.zeros(r, bool))[k] = True

    keys = sorted(holds)
    p = len(keys)
    pair = np.zeros((n, n), np.float32)
    pairs = np.array(keys, np.int64).reshape(p, 2)
    predicates = np.zeros((p, r), np.float32)
    spans = np.zeros((p, t, r), np.float32)
    span_mask = np.zeros((p, t), bool)
    for q, (i, j) in enumerate(keys):
        pair[i, j] = 1.0
        predicates[q] = named[(i, j)]
        both = match.matched_frames[i] & match.matched_frames[j]  # [T]
        span_mask[q] = both
        spans[q] = holds[(i, j)] & both[:, None]
    return RelationTargets(pair=pair, pairs=pairs, predicates=predicates, spans=spans, span_mask=span_mask)
