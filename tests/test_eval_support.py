"""Builders shared by the evaluator tests: tiny hand-made tubes and graphs, and random ones.

(Named ``test_eval_*`` to live with the evaluator tests; it holds no tests itself.)
"""

from __future__ import annotations

import copy

import numpy as np

from psg4d.data.schema import MaskTube, ObjectTrack, Relation, SceneGraph4D

H = W = 4


def rows_tube(T: int, frames: dict[int, tuple[int, int, int, int]], h: int = H, w: int = W) -> MaskTube:
    """A tube with the box ``[r0, r1) x [c0, c1)`` in each listed frame, absent elsewhere."""
    m = np.zeros((T, h, w), dtype=bool)
    present = [False] * T
    for t, (r0, r1, c0, c1) in frames.items():
        m[t, r0:r1, c0:c1] = True
        present[t] = True
    return MaskTube.from_dense(m, present=present)


def box_tube(T: int, box: tuple[int, int, int, int], frames: range | None = None, h: int = H, w: int = W) -> MaskTube:
    return rows_tube(T, {t: box for t in (frames if frames is not None else range(T))}, h, w)


def graph(
    vid: str,
    T: int,
    objects: list[ObjectTrack],
    relations: list[Relation],
    *,
    h: int = H,
    w: int = W,
    object_vocab: list[str] | None = None,
    predicate_vocab: list[str] | None = None,
) -> SceneGraph4D:
    return SceneGraph4D(
        video_id=vid,
        num_frames=T,
        height=h,
        width=w,
        objects=objects,
        relations=relations,
        object_vocab=object_vocab,
        predicate_vocab=predicate_vocab,
    )


# ------------------------------------------------------------------ random graphs

CATS = ["person", "cup", "table", "chair", "bottle"]
PREDS = ["holding", "on", "next to", "looking at", "touching"]


def random_gt(rng: np.random.Generator, vid: str, *, T: int = 6, size: int = 12, n_obj: int = 4, n_rel: int = 5,
              with_vocab: bool = True) -> SceneGraph4D:
    """Objects with moving boxes present in every frame (so every GT relation can be hit)."""
    objects = []
    for oid in range(n_obj):
        m = np.zeros((T, size, size), dtype=bool)
        y, x = rng.integers(0, size - 3, 2)
        hh, ww = rng.integers(2, 6, 2)
        for t in range(T):
            y = int(np.clip(y + rng.integers(-1, 2), 0, size - 2))
            x = int(np.clip(x + rng.integers(-1, 2), 0, size - 2))
            m[t, y : y + hh, x : x + ww] = True
        objects.append(ObjectTrack(oid, str(rng.choice(CATS)), tube=MaskTube.from_dense(m)))
    relations = []
    for _ in range(n_rel):
        s, o = rng.choice(n_obj, 2, replace=False)
        spans = []
        for _ in range(int(rng.integers(1, 3))):
            a = int(rng.integers(0, T))
            spans.append((a, int(rng.integers(a, T))))
        relations.append(Relation(int(s), int(o), str(rng.choice(PREDS)), spans))
    return graph(
        vid, T, objects, relations, h=size, w=size,
        object_vocab=list(CATS) if with_vocab else None, predicate_vocab=list(PREDS) if with_vocab else None,
    )


def perfect_prediction(gt: SceneGraph4D) -> SceneGraph4D:
    """The GT itself as a prediction, scores descending in list order."""
    p = copy.deepcopy(gt)
    n = len(p.relations)
    for i, r in enumerate(p.relations):
        r.score = float(n - i)
    return p


def noisy_prediction(rng: np.random.Generator, gt: SceneGraph4D, *, n_extra: int = 6) -> SceneGraph4D:
    """Shifted tubes, sometimes wrong labels, jittered spans, plus random extra candidates."""
    T, size = gt.num_frames, gt.height
    objects = []
    for o in gt.objects:
        m = o.tube.to_dense()
        if rng.random() < 0.4:  # some tubes shifted by a pixel, most exact, so that recall is mid-range
            m = np.roll(m, shift=tuple(int(v) for v in rng.integers(-1, 2, 2)), axis=(1, 2))
        cat = o.category if rng.random() < 0.8 else str(rng.choice(CATS))
        fc = None
        if rng.random() < 0.5:
            fc = [cat if rng.random() < 0.7 else str(rng.choice(CATS)) for _ in range(T)]
        objects.append(ObjectTrack(o.object_id, cat, tube=MaskTube.from_dense(m), frame_categories=fc))
    rels = []
    for r in gt.relations:
        spans = [(max(0, a - int(rng.integers(0, 2))), min(T - 1, b + int(rng.integers(0, 2)))) for a, b in r.spans]
        p = r.predicate if rng.random() < 0.8 else str(rng.choice(PREDS))
        rels.append(Relation(r.subject_id, r.object_id, p, spans, score=float(rng.random())))
    n_obj = len(objects)
    for _ in range(n_extra):
        s, o = rng.choice(n_obj, 2, replace=False)
        a = int(rng.integers(0, T))
        rels.append(
            Relation(int(s), int(o), str(rng.choice(PREDS)), [(a, int(rng.integers(a, T)))], score=float(rng.random()))
        )
    return graph(gt.video_id, T, objects, rels, h=size, w=size)


def renumber(g: SceneGraph4D, mapping: dict[int, int], object_order: list[int]) -> SceneGraph4D:
    """The same graph with object ids renamed and the object list reordered (relation order kept)."""
    h = copy.deepcopy(g)
    by_id = {o.object_id: o for o in h.objects}
    h.objects = [by_id[i] for i in object_order]
    for o in h.objects:
        o.object_id = mapping[o.object_id]
    for r in h.relations:
        r.subject_id, r.object_id = mapping[r.subject_id], mapping[r.object_id]
    return h
