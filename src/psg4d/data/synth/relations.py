"""Relation labels computed from the simulated state and the rendered frames.

Every predicate is a per-frame boolean derived from geometry and motion
(contact between a bottom and a top surface, relative depth in the depth map,
velocities, which agent grasps or touches which object). Runs of true frames
become inclusive spans; runs shorter than ``min_span`` frames are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from psg4d.data.scene_graph import Relation, spans_from_mask
from psg4d.data.synth.script import (
    ROLE_AGENT,
    ROLE_FURNITURE,
    ROLE_OBJECT,
    ROLE_STUFF,
    Entity,
    Scene,
    entity_center,
    entity_half_xy,
    heading_axes,
    part_tops,
)
from psg4d.data.synth.world import PREDICATES


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    """Scale-dependent tolerances of one preset (metres, metres per frame, pixels)."""

    contact: float  # a bottom touches a top when closer than this
    move: float  # speed above which something moves
    near_gap: float  # footprint gap for "next to"
    side_depth: float  # "next to": camera-depth difference below this (side by side)
    front_margin: float  # "in front of": median depth difference above this
    min_pixels: int  # visible enough for a depth comparison
    reach_cos: float
    reach_range: float
    walk_cos: float
    talk_dist: float
    face_cos: float = 0.85
    x_overlap: float = 0.3  # "in front of": image x-overlap, fraction of the narrower object


THRESHOLDS: dict[str, Thresholds] = {
    "hoi": Thresholds(contact=0.01, move=0.006, near_gap=0.10, side_depth=0.07, front_margin=0.05, min_pixels=6,
                      reach_cos=0.8, reach_range=0.6, walk_cos=0.9, talk_dist=2.0),
    "gta": Thresholds(contact=0.02, move=0.03, near_gap=0.6, side_depth=0.5, front_margin=0.3, min_pixels=6,
                      reach_cos=0.7, reach_range=1.2, walk_cos=0.9, talk_dist=2.0),
}  # fmt: skip


def velocity(x: np.ndarray) -> np.ndarray:
    """Central differences along axis 0 (one-sided at the ends), per frame."""
    if len(x) < 2:
        return np.zeros_like(x)
    return np.gradient(x, axis=0)


def runs_to_spans(mask: np.ndarray, min_span: int, frame_ids: np.ndarray | None = None) -> list[tuple[int, int]]:
    """Inclusive spans of the true runs of ``mask`` at least ``min_span`` long."""
    spans = spans_from_mask(mask, min_len=min_span)
    if frame_ids is None:
        return spans
    return [(int(frame_ids[a]), int(frame_ids[b])) for a, b in spans]


def support_of(scene: Scene, subject: Entity, eps: float) -> np.ndarray:
    """``[T]`` id of the entity whose top surface the subject's bottom rests on (-1: none).

    The floor (z = 0) supports everything above it; a flat part of another entity
    supports a subject whose footprint centre lies over that part's top. The highest
    touching top wins.
    """
    T = scene.num_frames
    out = np.full(T, -1, dtype=np.int64)
    best = np.full(T, -np.inf)
    bottom = subject.pos[:, 2]
    xy = subject.pos[:, :2]
    for e in scene.entities:
        if e is subject or e.role == ROLE_AGENT:
            continue
        if e.role == ROLE_STUFF:
            if e.name != "floor":
                continue
            ok = np.abs(bottom) < eps
            top = np.zeros(T)
            upd = ok & (top > best)
            out[upd], best[upd] = e.object_id, top[upd]
            continue
        for top, c, half, flat in part_tops(e):
            if not flat:
                continue
            inside = np.all(np.abs(xy - c) <= half + 1e-6, axis=-1)
            ok = inside & (np.abs(bottom - top) < eps)
            upd = ok & (top > best)
            out[upd], best[upd] = e.object_id, top[upd]
    return out


class Visibility:
    """Per object and rendered frame: pixel count and image x-range (``-1`` where
    unseen); median depth of the visible pixels computed on demand."""

    def __init__(self, ids: np.ndarray, depth: np.ndarray, object_ids: list[int]):
        self.ids, self.depth = ids, depth
        self.pixels: dict[int, np.ndarray] = {}
        self.x0: dict[int, np.ndarray] = {}
        self.x1: dict[int, np.ndarray] = {}
        self._median: dict[tuple[int, int], float] = {}
        W = ids.shape[2]
        for oid in object_ids:
            m = ids == oid
            self.pixels[oid] = m.sum((1, 2))
            colmask = m.any(1)  # [F, W]
            seen = colmask.any(1)
            self.x0[oid] = np.where(seen, np.argmax(colmask, 1), -1)
            self.x1[oid] = np.where(seen, W - 1 - np.argmax(colmask[:, ::-1], 1), -1)

    def median_depth(self, oid: int, f: int) -> float:
        key = (oid, f)
        if key not in self._median:
            vals = self.depth[f][self.ids[f] == oid]
            self._median[key] = float(np.median(vals)) if vals.size else float("nan")
        return self._median[key]


def visibility(ids: np.ndarray, depth: np.ndarray, object_ids: list[int]) -> Visibility:
    return Visibility(ids, depth, object_ids)


class _Labels:
    """The per-frame labels being collected: ``(subject, object, predicate) -> bool [F]``
    over the rendered frames. A predicate found by two rules holds where either holds."""

    def __init__(self, frames: np.ndarray):
        self.frames = frames
        self.masks: dict[tuple[int, int, str], np.ndarray] = {}

    def put(self, s: int, o: int, pred: str, mask_T: np.ndarray) -> None:
        """Add ``mask_T`` (bool ``[T]`` over all simulated frames) where it holds at least once."""
        m = np.asarray(mask_T, dtype=bool)[self.frames]
        if m.any():
            key = (s, o, pred)
            self.masks[key] = self.masks[key] | m if key in self.masks else m


@dataclass(frozen=True, kw_only=True)
class _Facts:
    """The per-frame state that several predicates are derived from (each array ``[T]`` or ``[T, 3]``)."""

    num_frames: int  # T, the simulated frames
    things: list[Entity]  # objects and furniture
    objects: list[Entity]
    agents: list[Entity]
    people: list[Entity]
    sup: dict[int, np.ndarray]  # id of the entity each thing or person rests on (-1: none)
    held_by: dict[int, np.ndarray]  # id of the agent grasping each thing (-1: none)
    centers: dict[int, np.ndarray]
    vel: dict[int, np.ndarray]  # velocities of the things


def _scene_facts(scene: Scene, th: Thresholds) -> _Facts:
    T = scene.num_frames
    ents = scene.entities
    things = [e for e in ents if e.role in (ROLE_OBJECT, ROLE_FURNITURE)]
    objects = [e for e in ents if e.role == ROLE_OBJECT]
    agents = [e for e in ents if e.role == ROLE_AGENT]
    people = [e for e in agents if e.name == "person"]
    sup = {e.object_id: support_of(scene, e, th.contact) for e in things + people}
    held_by = {e.object_id: np.full(T, -1, dtype=np.int64) for e in things}
    for a in agents:
        for e in things:
            held_by[e.object_id][a.grasp == e.object_id] = a.object_id
    return _Facts(
        num_frames=T,
        things=things,
        objects=objects,
        agents=agents,
        people=people,
        sup=sup,
        held_by=held_by,
        centers={e.object_id: entity_center(e) for e in ents if e.role != ROLE_STUFF},
        vel={e.object_id: velocity(e.pos) for e in things},
    )


def _support_labels(fx: _Facts, labels: _Labels) -> None:
    """on / standing on / sitting on."""
    for e in fx.objects:
        for sid in np.unique(fx.sup[e.object_id]):
            if sid >= 0:
                labels.put(e.object_id, int(sid), "on", fx.sup[e.object_id] == sid)
    for p in fx.people:
        for sid in np.unique(fx.sup[p.object_id]):
            if sid >= 0:
                s = fx.sup[p.object_id] == sid
                labels.put(p.object_id, int(sid), "standing on", s & (p.posture == 0))
                labels.put(p.object_id, int(sid), "sitting on", s & (p.posture == 1))


def _manipulation_labels(a: Entity, fx: _Facts, th: Thresholds, labels: _Labels) -> None:
    """holding / picking up / putting down / carrying / pushing / pulling (agent -> object)."""
    for e in fx.objects:
        oid = e.object_id
        v = fx.vel[oid]
        vh = np.linalg.norm(v[:, :2], axis=-1)
        held = a.grasp == oid
        labels.put(a.object_id, oid, "holding", held)
        labels.put(a.object_id, oid, "picking up", held & (v[:, 2] > th.move))
        labels.put(a.object_id, oid, "putting down", held & (v[:, 2] < -th.move))
        labels.put(a.object_id, oid, "carrying", held & (vh > th.move) & (fx.sup[oid] < 0))
        touch = a.contact == oid
        away = np.einsum("ti,ti->t", v[:, :2], e.pos[:, :2] - a.base[:, :2])
        labels.put(a.object_id, oid, "pushing", touch & (vh > th.move) & (away > 0))
        labels.put(a.object_id, oid, "pulling", touch & (vh > th.move) & (away < 0))


def _reaching_labels(a: Entity, base_v: np.ndarray, fx: _Facts, th: Thresholds, labels: _Labels) -> None:
    """reaching toward: the hand moves (relative to the body) toward the best-aligned object in range."""
    T = fx.num_frames
    eff_rel_v = velocity(a.effector - a.shoulder)
    free_hand = (a.grasp < 0) & (a.contact < 0)
    speed = np.linalg.norm(eff_rel_v, axis=-1)
    # reaching is an arm movement: a walking person approaches (walking toward) instead
    body_still = np.linalg.norm(base_v, axis=-1) < th.move
    best_cos = np.full(T, th.reach_cos)
    best_id = np.full(T, -1, dtype=np.int64)
    for e in fx.objects:
        top = e.pos.copy()
        top[:, 2] += e.category.height
        d = top - a.effector
        dist = np.linalg.norm(d, axis=-1)
        cos = np.einsum("ti,ti->t", eff_rel_v, d) / np.maximum(speed * dist, 1e-9)
        ok = free_hand & body_still & (speed > th.move) & (dist < th.reach_range) & (cos > best_cos)
        ok &= fx.held_by[e.object_id] < 0
        best_cos[ok], best_id[ok] = cos[ok], e.object_id
    for oid in np.unique(best_id):
        if oid >= 0:
            labels.put(a.object_id, int(oid), "reaching toward", best_id == oid)


def _walking_labels(a: Entity, base_v: np.ndarray, fx: _Facts, th: Thresholds, labels: _Labels) -> None:
    """walking toward: the body moves forward toward the nearest well-aligned thing or person."""
    T = fx.num_frames
    vb = base_v[:, :2]
    sb = np.linalg.norm(vb, axis=-1)
    fwd, _ = heading_axes(a.heading)
    forward = np.einsum("ti,ti->t", vb, fwd) > 0.7 * sb
    best_d = np.full(T, np.inf)
    best_id = np.full(T, -1, dtype=np.int64)
    for e in fx.things + fx.people:
        if e is a or e.name == "rug":
            continue
        d = fx.centers[e.object_id][:, :2] - a.base[:, :2]
        dist = np.linalg.norm(d, axis=-1)
        cos = np.einsum("ti,ti->t", vb, d) / np.maximum(sb * dist, 1e-9)
        # a held or pushed object moves with the walker: it is not walked toward
        engaged = a.contact == e.object_id
        if e.object_id in fx.held_by:
            engaged |= fx.held_by[e.object_id] == a.object_id
        ok = (sb > th.move) & forward & (cos > th.walk_cos) & (dist > 0.3) & ~engaged & (dist < best_d)
        best_d[ok], best_id[ok] = dist[ok], e.object_id
    for oid in np.unique(best_id):
        if oid >= 0:
            labels.put(a.object_id, int(oid), "walking toward", best_id == oid)


def _talking_labels(fx: _Facts, th: Thresholds, labels: _Labels) -> None:
    """talking to: two still people close together, facing each other."""
    for p in fx.people:
        fwd, _ = heading_axes(p.heading)
        still_p = np.linalg.norm(velocity(p.base)[:, :2], axis=-1) < th.move
        for q in fx.people:
            if q is p:
                continue
            d = q.base[:, :2] - p.base[:, :2]
            dist = np.linalg.norm(d, axis=-1)
            fq, _ = heading_axes(q.heading)
            still_q = np.linalg.norm(velocity(q.base)[:, :2], axis=-1) < th.move
            faces_p = np.einsum("ti,ti->t", fwd, d) / np.maximum(dist, 1e-9) > th.face_cos
            faces_q = np.einsum("ti,ti->t", fq, -d) / np.maximum(dist, 1e-9) > th.face_cos
            labels.put(p.object_id, q.object_id, "talking to",
                       still_p & still_q & (dist < th.talk_dist) & faces_p & faces_q)


def _next_to_labels(scene: Scene, fx: _Facts, th: Thresholds, labels: _Labels) -> None:
    """next to: side by side on the same support, at similar depth from the camera."""
    things, sup, held_by = fx.things, fx.sup, fx.held_by
    cam_depth = {e.object_id: scene.camera.to_camera(fx.centers[e.object_id][:, None, :])[:, 0, 2] for e in things}
    img_u = {e.object_id: scene.camera.project(fx.centers[e.object_id][:, None, :])[:, 0, 0] for e in things}
    side_things = [e for e in things if e.name != "rug" and (e.role == ROLE_OBJECT or scene.preset == "gta")]
    half = {e.object_id: entity_half_xy(e) for e in things}
    for i, e in enumerate(side_things):
        for f in side_things[i + 1 :]:
            a_id, b_id = e.object_id, f.object_id
            gap = np.max(
                np.abs(e.pos[:, :2] - f.pos[:, :2]) - half[a_id] - half[b_id], axis=-1
            )
            same = (sup[a_id] == sup[b_id]) & (sup[a_id] >= 0)
            free = (held_by[a_id] < 0) & (held_by[b_id] < 0)
            ok = same & free & (gap < th.near_gap) & (np.abs(cam_depth[a_id] - cam_depth[b_id]) < th.side_depth)
            left = img_u[a_id] <= img_u[b_id]
            labels.put(a_id, b_id, "next to", ok & left)
            labels.put(b_id, a_id, "next to", ok & ~left)


def _depth_order_labels(vis: Visibility, fx: _Facts, th: Thresholds, labels: _Labels) -> None:
    """in front of / behind: overlapping in image x, clearly nearer in the depth map."""
    T = fx.num_frames
    frames, sup, held_by = labels.frames, fx.sup, fx.held_by
    spatial = [e for e in fx.things + fx.people if e.name != "rug"]
    for i, e in enumerate(spatial):
        for f in spatial[i + 1 :]:
            a_id, b_id = e.object_id, f.object_id
            pa, pb = vis.pixels[a_id], vis.pixels[b_id]
            both = (pa >= th.min_pixels) & (pb >= th.min_pixels)
            lo = np.maximum(vis.x0[a_id], vis.x0[b_id])
            hi = np.minimum(vis.x1[a_id], vis.x1[b_id])
            narrow = np.minimum(vis.x1[a_id] - vis.x0[a_id], vis.x1[b_id] - vis.x0[b_id]) + 1
            overlap = (hi - lo + 1) >= th.x_overlap * narrow
            unrelated = np.ones(T, dtype=bool)
            for x, y in ((a_id, b_id), (b_id, a_id)):
                if x in sup:
                    unrelated &= sup[x] != y
                if x in held_by:
                    unrelated &= held_by[x] != y
            ok_f = both & overlap & unrelated[frames]
            full_a = np.zeros(T, dtype=bool)
            full_b = np.zeros(T, dtype=bool)
            for fi in np.nonzero(ok_f)[0]:
                da, db = vis.median_depth(a_id, int(fi)), vis.median_depth(b_id, int(fi))
                full_a[frames[fi]] = da < db - th.front_margin
                full_b[frames[fi]] = db < da - th.front_margin
            labels.put(a_id, b_id, "in front of", full_a)
            labels.put(b_id, a_id, "behind", full_a)
            labels.put(b_id, a_id, "in front of", full_b)
            labels.put(a_id, b_id, "behind", full_b)


def frame_labels(
    scene: Scene, vis: Visibility, frames: np.ndarray, th: Thresholds
) -> dict[tuple[int, int, str], np.ndarray]:
    """Per-frame booleans ``[F]`` (over the rendered ``frames``) of every
    ``(subject, object, predicate)`` that holds at least once."""
    labels = _Labels(frames)
    fx = _scene_facts(scene, th)
    _support_labels(fx, labels)
    for a in fx.agents:
        base_v = velocity(a.base)
        _manipulation_labels(a, fx, th, labels)
        _reaching_labels(a, base_v, fx, th, labels)
        if a.name == "person":
            _walking_labels(a, base_v, fx, th, labels)
    _talking_labels(fx, th, labels)
    _next_to_labels(scene, fx, th, labels)
    _depth_order_labels(vis, fx, th, labels)
    return labels.masks


def compute_relations(
    scene: Scene,
    ids: np.ndarray,
    depth: np.ndarray,
    *,
    frames: np.ndarray | None = None,
    predicates: tuple[str, ...] | None = None,
    min_span: int = 2,
) -> list[Relation]:
    """Relations of a scene from its state and its rendered ``ids``/``depth`` (``[F, H, W]``
    for the rendered ``frames``; all frames when ``None``). Spans index the rendered frames
    (0..F-1). Sorted by (subject, object, predicate order)."""
    frames = np.arange(scene.num_frames) if frames is None else np.asarray(frames)
    th = THRESHOLDS[scene.preset]
    oids = [e.object_id for e in scene.entities if e.role != ROLE_STUFF]
    vis = visibility(ids, depth, oids)
    labels = frame_labels(scene, vis, frames, th)
    allowed = set(predicates) if predicates is not None else set(PREDICATES)
    order = {p: i for i, p in enumerate(PREDICATES)}
    out = []
    for (s, o, pred), m in sorted(labels.items(), key=lambda kv: (kv[0][0], kv[0][1], order[kv[0][2]])):
        if pred not in allowed:
            continue
        spans = runs_to_spans(m, min_span)
        if spans:
            out.append(Relation(subject_id=s, object_id=o, predicate=pred, spans=spans))
    return out
