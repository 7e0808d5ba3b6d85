"""The ``hoi`` preset: egocentric hand-object manipulation on a table (PSG4D-HOI-like).

One hand reaches from below the camera into a table-top scene of small objects
(some stacked) and picks and places, picks and holds, pushes or pulls them.
"""

from __future__ import annotations

import numpy as np

from psg4d.data.synth.script import (
    PALM_R,
    ROLE_AGENT,
    ROLE_FURNITURE,
    ROLE_OBJECT,
    AgentPlan,
    Entity,
    Scene,
    ScriptOptions,
    apply_attachments,
    entity_half_xy,
    make_camera,
    make_entity,
    make_lighting,
    make_room,
    phase_frames,
    pick_categories,
    place_free,
    stuff_entities,
)
from psg4d.data.synth.world import CATEGORIES


def build_hoi(rng: np.random.Generator, opts: ScriptOptions) -> Scene:
    """Egocentric hand-object manipulation on a table (PSG4D-HOI-like)."""
    T = opts.num_frames
    ents = stuff_entities(rng, T)
    table_xy = rng.uniform(-0.06, 0.06, size=2)
    table = make_entity(rng, 3, CATEGORIES["table"], ROLE_FURNITURE, T, (table_xy[0], table_xy[1], 0.0))
    ents.append(table)
    top_z = table.category.height
    thx, thy = table.category.footprint
    region = (table_xy[0] - thx + 0.08, table_xy[0] + thx - 0.08, table_xy[1] - thy + 0.12, table_xy[1] + thy - 0.12)
    n = int(rng.integers(opts.min_objects, opts.max_objects + 1))
    taken: list[tuple[float, float, float, float]] = []
    oid = 10
    for cat in pick_categories(rng, opts, n):
        yaw = float(rng.uniform(-0.5, 0.5)) if cat.parts[0].shape == "box" else 0.0
        e = make_entity(rng, oid, cat, ROLE_OBJECT, T, (0, 0, top_z), yaw)
        half = tuple(entity_half_xy(e)[0])
        # a flat object may carry a small one (a stack): exercised by "on" between things
        stack_on = [
            s for s in ents
            if s.role == ROLE_OBJECT and s.category.parts[0].shape in ("box", "cylinder")
            and s.category.height < 0.06 and np.all(entity_half_xy(s)[0] > np.array(half) + 0.01)
        ]  # fmt: skip
        if stack_on and rng.random() < 0.35:
            s = stack_on[0]
            e.pos[:] = s.pos[0] + np.array([0.0, 0.0, s.category.height])
        else:
            xy = place_free(rng, half, region, taken, 0.03)
            if xy is None:
                continue
            e.pos[:, :2] = xy
            taken.append((xy[0], xy[1], half[0], half[1]))
        ents.append(e)
        oid += 1
    cam_pos = (
        table_xy[0] + rng.uniform(-0.08, 0.08),
        table_xy[1] - thy - 0.2 + rng.uniform(-0.05, 0.05),
        top_z + rng.uniform(0.55, 0.7),
    )
    camera = make_camera(
        rng, T, opts.size, pos=cam_pos, yaw=float(rng.uniform(-0.1, 0.1)), pitch=float(rng.uniform(-0.95, -0.8)),
        fov=62.0, motion=opts.camera_motion, scale=1.0,
    )  # fmt: skip
    hand = make_entity(rng, 4, CATEGORIES["hand"], ROLE_AGENT, T, (0, 0, 0))
    side = 1.0 if rng.random() < 0.7 else -1.0  # right or left hand
    shoulder = np.array([cam_pos[0] + side * 0.2, cam_pos[1] - 0.1, cam_pos[2] - 0.35])
    rest = np.array([cam_pos[0] + side * 0.16, cam_pos[1] + 0.30, top_z + 0.14])
    hand.base = np.repeat(shoulder[None], T, 0)
    hand.pos = hand.base.copy()
    hand.heading = np.zeros(T)
    hand.posture = np.zeros(T, dtype=np.int64)
    hand.grasp = np.full(T, -1, dtype=np.int64)
    hand.contact = np.full(T, -1, dtype=np.int64)
    hand.clothes = rng.uniform(0.1, 0.9, size=3)
    ents.append(hand)
    room = make_room(rng, back=table_xy[1] + thy + rng.uniform(0.3, 0.9), side=rng.uniform(1.2, 1.8), floor_period=0.4)
    scene = Scene(
        preset="hoi", num_frames=T, entities=ents, camera=camera, lighting=make_lighting(rng), room=room, fps=opts.fps
    )

    plan = AgentPlan(hand, T)
    plan.local[:] = plan.to_local(rest, 0)
    _script_hoi(rng, scene, plan, region, top_z)
    hand.effector = np.array([plan.eff_world(t) for t in range(T)])
    hand.shoulder = hand.base
    apply_attachments(scene)
    return scene


class _TableTop:
    """What the hand's script knows of the objects on the table while it plans: where each
    stands (its bottom centre) and which object it rests on, updated by the planned actions."""

    def __init__(self, objs: list[Entity], region: tuple[float, float, float, float], top_z: float):
        self.objs = objs
        self.region = region  # x0, x1, y0, y1 where objects may stand
        self.top_z = top_z
        self.where = {e.object_id: e.pos[0].copy() for e in objs}
        self.supported_by: dict[int, int | None] = {e.object_id: None for e in objs}
        for e in objs:
            for s in objs:
                stacked = abs(self.where[e.object_id][2] - (self.where[s.object_id][2] + s.category.height)) < 1e-6
                if s is not e and stacked and np.allclose(self.where[e.object_id][:2], self.where[s.object_id][:2]):
                    self.supported_by[e.object_id] = s.object_id

    def carries_nothing(self, oid: int) -> bool:
        return all(self.supported_by[o] != oid for o in self.supported_by)

    def movable(self) -> list[Entity]:
        """Objects with nothing on top."""
        return [e for e in self.objs if self.carries_nothing(e.object_id)]

    def footprints_except(self, oid: int) -> list[tuple[float, float, float, float]]:
        """``(x, y, half x, half y)`` of every other object, where the plan believes it is."""
        return [(*self.where[o.object_id][:2], *entity_half_xy(o)[0]) for o in self.objs if o.object_id != oid]

    def collides(self, oid: int, xy: np.ndarray, half: np.ndarray) -> bool:
        """Object ``oid`` moved to ``xy`` would leave the table region or touch another object."""
        others = self.footprints_except(oid)
        x0, x1, y0, y1 = self.region
        inside = x0 + half[0] < xy[0] < x1 - half[0] and y0 + half[1] < xy[1] < y1 - half[1]
        return not inside or any(
            abs(xy[0] - ox) <= half[0] + hx + 0.02 and abs(xy[1] - oy) <= half[1] + hy + 0.02
            for ox, oy, hx, hy in others
        )

    def stack_targets(self, oid: int, half: np.ndarray) -> list[Entity]:
        """Flat free objects that ``oid`` (footprint ``half``) fits on."""
        return [
            f for f in self.objs
            if f.object_id != oid and f.category.parts[0].shape == "box" and f.category.height < 0.06
            and self.supported_by[f.object_id] is None
            and self.carries_nothing(f.object_id)
            and np.all(entity_half_xy(f)[0] > half + 0.005)
        ]  # fmt: skip


def _script_hoi(
    rng: np.random.Generator, scene: Scene, plan: AgentPlan, region: tuple[float, float, float, float], top_z: float
) -> None:
    """The hand's actions: up to six tries at picking, pushing or pulling a free object,
    while frames remain; a pick may end holding the object to the end of the video."""
    T = scene.num_frames
    table = _TableTop([e for e in scene.entities if e.role == ROLE_OBJECT], region, top_z)
    plan.wait(int(rng.integers(0, max(1, T // 8) + 1)))
    actions = ["pick_place", "pick_hold", "push", "pull"]
    weights = np.array([0.4, 0.15, 0.225, 0.225])
    for _attempt in range(6):
        if plan.frames_left < 6:
            break
        action = actions[int(rng.choice(len(actions), p=weights))]
        # objects with nothing on top can be moved
        free = table.movable()
        if not free:
            break
        e = free[int(rng.integers(len(free)))]
        if action in ("pick_place", "pick_hold"):
            if _pick(rng, T, plan, table, e, hold=action == "pick_hold"):
                break  # the hand keeps holding it to the end
        else:
            _push_or_pull(rng, T, plan, table, e, push=action == "push")


def _pick(rng: np.random.Generator, T: int, plan: AgentPlan, table: _TableTop, e: Entity, *, hold: bool) -> bool:
    """Reach, grasp and lift ``e``; then hold it (True: to the end of the video, as when
    too few frames are left) or put it down elsewhere on the table and withdraw (False)."""
    oid = e.object_id
    h = e.category.height
    half = entity_half_xy(e)[0]
    p = table.where[oid]
    grip = p + np.array([0.0, 0.0, h + PALM_R * 0.9])
    plan.move_arm(grip, phase_frames(rng, T, 2, 3.5))
    plan.set_from_now(plan.e.grasp, oid)
    lift = float(rng.uniform(0.10, 0.18))
    plan.move_arm(grip + np.array([0, 0, lift]), phase_frames(rng, T, 2, 2.5))
    table.supported_by[oid] = None
    if hold or plan.frames_left < 5:
        plan.wait(phase_frames(rng, T, 2, 3))
        table.where[oid] = p + np.array([0, 0, lift])
        return True
    dest = _put_down_spot(rng, table, oid, half, p)
    plan.move_arm(dest + np.array([0, 0, h + PALM_R * 0.9 + lift]), phase_frames(rng, T, 2.5, 4))
    plan.move_arm(dest + np.array([0, 0, h + PALM_R * 0.9]), phase_frames(rng, T, 2, 2.5))
    plan.let_go(plan.e.grasp)
    table.where[oid] = dest
    plan.move_arm(dest + np.array([0, -0.1, h + 0.15]), phase_frames(rng, T, 1.5, 2.5))
    return False


def _put_down_spot(rng: np.random.Generator, table: _TableTop, oid: int, half: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Where a picked object goes (bottom centre): sometimes on a flat object (a new "on"
    between two things, from then on), else a free spot of the table (its old one if none)."""
    flats = table.stack_targets(oid, half)
    if flats and rng.random() < 0.4:
        f = flats[int(rng.integers(len(flats)))]
        table.supported_by[oid] = f.object_id
        return table.where[f.object_id] + np.array([0.0, 0.0, f.category.height])
    xy = place_free(rng, tuple(half), table.region, table.footprints_except(oid), 0.04)
    if xy is None:
        xy = (p[0], p[1])
    return np.array([xy[0], xy[1], table.top_z])


def _push_or_pull(
    rng: np.random.Generator, T: int, plan: AgentPlan, table: _TableTop, e: Entity, *, push: bool
) -> None:
    """Put the hand on the near (push) or far (pull) side of ``e`` and slide it along the
    shoulder-to-object direction; the other way when that is blocked, nothing when both are."""
    oid = e.object_id
    h = e.category.height
    half = entity_half_xy(e)[0]
    p = table.where[oid]
    shoulder = plan.e.base[plan.t]
    u = p[:2] - shoulder[:2]
    u /= max(np.linalg.norm(u), 1e-6)
    reach = float(np.abs(u) @ half) + PALM_R
    dist = float(rng.uniform(0.08, 0.16))
    sign = 1.0 if push else -1.0
    if table.collides(oid, p[:2] + sign * u * dist, half):
        # blocked (table edge or another object): try the other direction
        sign = -sign
        push = not push
        if table.collides(oid, p[:2] + sign * u * dist, half):
            return
    dest_xy = p[:2] + sign * u * dist
    z = p[2] + min(h * 0.5, 0.05) + 0.005
    near_side = np.array([*(p[:2] - u * reach), z])
    far_side = np.array([*(p[:2] + u * reach), z])
    if push:
        plan.move_arm(near_side, phase_frames(rng, T, 2, 3.5))
    else:
        plan.move_arm(np.array([*(p[:2] + u * reach), p[2] + h + 0.08]), phase_frames(rng, T, 2, 3))
        plan.move_arm(far_side, 2)
    plan.set_from_now(plan.e.contact, oid)
    contact_pt = near_side if push else far_side
    plan.move_arm(np.array([*(contact_pt[:2] + sign * u * dist), z]), phase_frames(rng, T, 2, 3.5))
    plan.let_go(plan.e.contact)
    table.where[oid] = np.array([dest_xy[0], dest_xy[1], p[2]])
    back = plan.eff_world(plan.t) + np.array([*(-u * 0.08), 0.1])
    plan.move_arm(back, 2)
