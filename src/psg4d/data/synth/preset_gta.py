"""The ``gta`` preset: a third-person room with people, furniture and carryable objects (PSG4D-GTA-like).

One to three people walk, pick up and carry, push or pull floor objects, sit
down, or walk up to each other and talk; a rug or step may raise whoever walks
over it.
"""

from __future__ import annotations

import math

import numpy as np

from psg4d.data.synth.script import (
    PERSON_HAND_R,
    PERSON_R,
    ROLE_AGENT,
    ROLE_FURNITURE,
    ROLE_OBJECT,
    AgentPlan,
    Entity,
    Scene,
    ScriptOptions,
    apply_attachments,
    entity_half_xy,
    heading_axes,
    make_camera,
    make_entity,
    make_lighting,
    make_room,
    phase_frames,
    pick_categories,
    place_free,
    stuff_entities,
)
from psg4d.data.synth.world import CATEGORIES, Category

REGION = (-2.0, 2.0, 1.5, 4.6)  # x0, x1, y0, y1 of the floor area in view (metres)
# A person's effector offsets are relative to the shoulder (right, forward, up), so
# sitting down lowers the hand with the body instead of moving it relative to the arm.
REST_ARM = np.array([PERSON_R + 0.08, 0.05, -0.45])  # hand hanging at the right side


def build_gta(rng: np.random.Generator, opts: ScriptOptions) -> Scene:
    """Third-person room with people, furniture and carryable objects (PSG4D-GTA-like)."""
    T = opts.num_frames
    floor = _Floor(rng, T, stuff_entities(rng, T))
    table, seat, platform = _place_furniture(rng, floor)
    objs = _place_objects(rng, opts, floor, table)
    people = _place_people(rng, floor)
    scene = _room_scene(rng, opts, floor.ents)
    plans = [AgentPlan(p, T) for p in people]
    for pl in plans:
        pl.local[:] = REST_ARM
        _stand_on_platform(pl, platform)
    _script_gta(rng, scene, plans, objs, seat, platform)
    for pl in plans:
        pl.e.effector = np.array([pl.eff_world(t) for t in range(T)])
        pl.e.shoulder = np.array([pl.shoulder(t) for t in range(T)])
    apply_attachments(scene)
    return scene


class _Floor:
    """The entities placed so far and the floor footprints they take up. Object ids are
    handed out in placement order (an entity that finds no room gets none)."""

    def __init__(self, rng: np.random.Generator, T: int, ents: list[Entity]):
        self.rng = rng
        self.T = T
        self.ents = ents
        self.taken: list[tuple[float, float, float, float]] = []  # x, y, half x, half y
        self.next_id = 3

    def add(
        self, cat: Category, role: str, *, yaw: float = 0.0, z: float = 0.0, near_back: bool = False
    ) -> Entity | None:
        """Make an entity and put it on a free floor spot (the back of the room with
        ``near_back``); ``None`` when there is no room."""
        e = make_entity(self.rng, self.next_id, cat, role, self.T, (0, 0, z), yaw)
        half = tuple(entity_half_xy(e)[0])
        reg = (REGION[0], REGION[1], REGION[2] + 1.2, REGION[3]) if near_back else REGION
        xy = place_free(self.rng, half, reg, self.taken, 0.35)
        if xy is None:
            return None
        e.pos[:, :2] = xy
        self.taken.append((xy[0], xy[1], half[0], half[1]))
        self.append(e)
        return e

    def append(self, e: Entity) -> None:
        """Add an entity placed by the caller (e.g. on the table: it takes no floor)."""
        self.ents.append(e)
        self.next_id += 1


def _place_furniture(rng: np.random.Generator, floor: _Floor) -> tuple[Entity | None, Entity | None, Entity | None]:
    """A table near the back, a seat, and half the time a rug or step (``platform``)."""
    table = floor.add(CATEGORIES["table"], ROLE_FURNITURE, yaw=float(rng.choice([0.0, math.pi / 2])), near_back=True)
    seat_name = ("chair", "sofa", "stool")[int(rng.integers(3))]
    seat = floor.add(
        CATEGORIES[seat_name], ROLE_FURNITURE, yaw=float(rng.choice([0.0, math.pi, math.pi / 2, -math.pi / 2]))
    )
    platform = None
    if rng.random() < 0.5:
        platform = floor.add(CATEGORIES[("rug", "step")[int(rng.integers(2))]], ROLE_FURNITURE)
    return table, seat, platform


def _place_objects(
    rng: np.random.Generator, opts: ScriptOptions, floor: _Floor, table: Entity | None
) -> list[Entity]:
    """Carryable objects on the floor; a small one may stand on the table (at most one there)."""
    n = int(rng.integers(opts.min_objects, opts.max_objects + 1))
    objs: list[Entity] = []
    for cat in pick_categories(rng, opts, n):
        on_table = table is not None and cat.height < 0.35 and rng.random() < 0.5 and not any(
            abs(o.pos[0, 2] - table.category.height) < 1e-6 for o in objs
        )
        if on_table:
            e = make_entity(rng, floor.next_id, cat, ROLE_OBJECT, floor.T, (0, 0, table.category.height), 0.0)
            e.pos[:, :2] = table.pos[0, :2] + rng.uniform(-0.25, 0.25, size=2) * np.array([1.0, 0.4])
            floor.append(e)
        else:
            e = floor.add(cat, ROLE_OBJECT, yaw=float(rng.uniform(-0.4, 0.4)) if cat.parts[0].shape == "box" else 0.0)
            if e is None:
                continue
        objs.append(e)
    return objs


def _place_people(rng: np.random.Generator, floor: _Floor) -> list[Entity]:
    """Up to three standing people at free floor spots (one to three are asked for), each facing a random way."""
    T = floor.T
    n_people = int(rng.choice([1, 2, 2, 3]))
    people: list[Entity] = []
    for _ in range(n_people):
        cat = CATEGORIES["person"]
        e = make_entity(rng, floor.next_id, cat, ROLE_AGENT, T, (0, 0, 0))
        xy = place_free(rng, (0.25, 0.25), REGION, floor.taken, 0.1)
        if xy is None:
            continue
        floor.taken.append((xy[0], xy[1], 0.3, 0.3))
        e.base = np.repeat(np.array([xy[0], xy[1], 0.0])[None], T, 0)
        e.pos = e.base  # the person's position is its base (shared array)
        e.heading = np.full(T, float(rng.uniform(-math.pi, math.pi)))
        e.posture = np.zeros(T, dtype=np.int64)
        e.grasp = np.full(T, -1, dtype=np.int64)
        e.contact = np.full(T, -1, dtype=np.int64)
        e.clothes = rng.uniform(0.1, 0.9, size=3)
        floor.append(e)
        people.append(e)
    return people


def _room_scene(rng: np.random.Generator, opts: ScriptOptions, ents: list[Entity]) -> Scene:
    """The scene of ``ents`` seen from a camera at head height in front of them, in a walled room."""
    T = opts.num_frames
    cam_pos = (rng.uniform(-0.3, 0.3), rng.uniform(-0.6, -0.2), rng.uniform(1.5, 1.8))
    camera = make_camera(
        rng, T, opts.size, pos=cam_pos, yaw=float(rng.uniform(-0.1, 0.1)), pitch=float(rng.uniform(-0.32, -0.22)),
        fov=60.0, motion=opts.camera_motion, scale=3.0,
    )  # fmt: skip
    room = make_room(rng, back=rng.uniform(6.0, 7.0), side=rng.uniform(3.0, 4.0), floor_period=0.6)
    return Scene(
        preset="gta", num_frames=T, entities=ents, camera=camera, lighting=make_lighting(rng), room=room, fps=opts.fps
    )


def _platform_z(platform: Entity | None, xy: np.ndarray) -> float:
    if platform is None:
        return 0.0
    hx, hy = platform.category.footprint
    c = platform.pos[0]
    if abs(xy[0] - c[0]) <= hx and abs(xy[1] - c[1]) <= hy:
        return platform.category.height
    return 0.0


def _stand_on_platform(pl: AgentPlan, platform: Entity | None) -> None:
    pl.e.base[:, 2] = _platform_z(platform, pl.e.base[0, :2])


def _walk(pl: AgentPlan, target_xy: np.ndarray, platform: Entity | None, speed: float) -> None:
    """Walk straight to ``target_xy`` at ``speed`` metres per frame (as far as the video allows)."""
    start = pl.e.base[pl.t]
    dist = float(np.linalg.norm(target_xy - start[:2]))
    if dist < 0.05:
        return
    dur = max(2, int(math.ceil(dist / speed)))
    if dur > pl.frames_left:
        dur = pl.frames_left
        if dur < 2:
            return
        target_xy = start[:2] + (target_xy - start[:2]) * min(1.0, dur * speed / dist)
    goal = np.array([target_xy[0], target_xy[1], 0.0])
    pl.move_base(goal, dur)
    # follow the platform's top while walking over it
    for t in range(pl.t - dur + 1, pl.T):
        pl.e.base[t, 2] = _platform_z(platform, pl.e.base[t, :2])


def _approach_point(pl: AgentPlan, target: Entity, gap: float) -> np.ndarray:
    """A point ``gap`` away from the target's footprint on the agent's side."""
    p = pl.e.base[pl.t, :2]
    c = target.pos[pl.t, :2]
    d = p - c
    d /= max(np.linalg.norm(d), 1e-6)
    half = entity_half_xy(target)[pl.t]
    return c + d * (float(np.abs(d) @ half) + gap)


def _script_gta(
    rng: np.random.Generator, scene: Scene, plans: list[AgentPlan], objs: list[Entity], seat: Entity | None,
    platform: Entity | None,
) -> None:  # fmt: skip
    T = scene.num_frames
    speed = float(rng.uniform(0.22, 0.32))  # metres per frame (about 1.3 m/s at 5 fps)
    busy: set[int] = set()
    if len(plans) >= 2 and rng.random() < 0.45:
        _talk(rng, plans[0], plans[1], platform, speed)
        plans = plans[2:]
    for pl in plans:
        choices = ["walk", "pick", "push", "pull", "sit", "idle"]
        w = np.array([0.15, 0.3, 0.15, 0.15, 0.2, 0.05])
        action = choices[int(rng.choice(len(choices), p=w))]
        free_objs = [o for o in objs if o.object_id not in busy]
        if action in ("push", "pull"):
            # only things standing on the floor slide; table-top ones would float off the edge
            free_objs = [o for o in free_objs if o.pos[0, 2] == 0.0]
        if action in ("pick", "push", "pull") and not free_objs:
            action = "walk"
        if action == "sit" and (seat is None or seat.object_id in busy):
            action = "walk"
        if action == "idle":
            pl.wait(T)
            continue
        if action == "walk":
            targets = [e for e in scene.entities if e.role in (ROLE_OBJECT, ROLE_FURNITURE) and e.name not in ("rug",)]
            tgt = targets[int(rng.integers(len(targets)))]
            pl.wait(int(rng.integers(0, 3)))
            _walk(pl, _approach_point(pl, tgt, 0.45), platform, speed)
            pl.turn(_face(pl, tgt.pos[pl.t]))
            continue
        if action == "sit":
            busy.add(seat.object_id)
            front = _seat_front(seat)
            _start_near(rng, pl, front, platform)
            _walk(pl, front, platform, speed)
            if pl.frames_left < 3:
                continue
            facing = float(seat.yaw[0]) + math.pi  # a seat's back is at +y in its frame
            pl.turn(facing)
            pl.wait(1)
            sz = seat.category.seat_height
            target = np.array([seat.pos[0, 0], seat.pos[0, 1], sz])
            pl.move_base(target, 2, face=facing)
            pl.set_from_now(pl.e.posture, 1)
            continue
        obj = free_objs[int(rng.integers(len(free_objs)))]
        busy.add(obj.object_id)
        _start_near(rng, pl, obj.pos[0, :2], platform)
        if action == "pick":
            _pick_carry(rng, pl, obj, platform, speed)
        else:
            _push_pull(rng, pl, obj, platform, speed, push=action == "push")


def _start_near(rng: np.random.Generator, pl: AgentPlan, target_xy: np.ndarray, platform: Entity | None) -> None:
    """Put the person, at the start, a short walk from its goal, so that the whole
    interaction fits in the video (a walk of about a quarter of it)."""
    d = rng.uniform(0.7, 1.2) * pl.T / 16
    ang = rng.uniform(-math.pi, math.pi)
    x0, x1, y0, y1 = REGION
    xy = np.clip(target_xy + d * np.array([math.sin(ang), math.cos(ang)]), [x0, y0], [x1, y1])
    pl.e.base[:, :2] = xy
    _stand_on_platform(pl, platform)
    pl.e.heading[:] = math.atan2(*(target_xy - xy))


def _face(pl: AgentPlan, target: np.ndarray) -> float:
    d = target[:2] - pl.e.base[pl.t, :2]
    return math.atan2(d[0], d[1])


def _seat_front(seat: Entity) -> np.ndarray:
    fwd, _ = heading_axes(float(seat.yaw[0]) + math.pi)
    half = seat.category.footprint[1]
    return seat.pos[0, :2] + fwd * (half + 0.35)


def _talk(rng: np.random.Generator, a: AgentPlan, b: AgentPlan, platform: Entity | None, speed: float) -> None:
    """Two people walk toward each other, stop about a metre apart, face each other and stay."""
    pa, pb = a.e.base[0, :2], b.e.base[0, :2]
    mid = (pa + pb) / 2
    d = pb - pa
    d /= max(np.linalg.norm(d), 1e-6)
    gap = float(rng.uniform(0.5, 0.7))
    for pl, goal in ((a, mid - d * gap), (b, mid + d * gap)):
        _walk(pl, goal, platform, speed)
    t0 = max(a.t, b.t)
    for pl, other in ((a, b), (b, a)):
        pl.t = t0
        pl.turn(_face(pl, other.e.base[min(t0, pl.T - 1)]))
        pl.wait(pl.T)


def _pick_carry(rng: np.random.Generator, pl: AgentPlan, obj: Entity, platform: Entity | None, speed: float) -> None:
    """Walk to the object, reach, grasp, lift, carry it a metre or so, put it down, let go."""
    T = pl.T
    _walk(pl, _approach_point(pl, obj, 0.30), platform, speed)
    if pl.frames_left < 4:
        return
    pl.turn(_face(pl, obj.pos[pl.t]))
    h = obj.category.height
    grip = obj.pos[pl.t] + np.array([0.0, 0.0, h + PERSON_HAND_R * 0.9])
    pl.move_arm(grip, phase_frames(rng, T, 2, 3))
    pl.set_from_now(pl.e.grasp, obj.object_id)
    pl.move_arm(grip + np.array([0, 0, float(rng.uniform(0.2, 0.35))]), 2)
    if pl.frames_left < 4:
        return
    # carry the object in front, walking to a free floor spot, then put it down there
    d = rng.uniform(-1, 1, size=2)
    d /= max(np.linalg.norm(d), 1e-6)
    dest = pl.e.base[pl.t, :2] + d * float(rng.uniform(0.6, 1.2))
    dest = np.clip(dest, [REGION[0], REGION[2]], [REGION[1], REGION[3]])
    _walk(pl, dest, platform, speed)
    if pl.frames_left < 3:
        return
    down = pl.eff_world(pl.t).copy()
    # lower until the object's bottom reaches the floor (or the platform under it)
    down[2] = _platform_z(platform, down[:2]) + h + PERSON_HAND_R * 0.9
    pl.move_arm(down, phase_frames(rng, T, 2, 3))
    pl.let_go(pl.e.grasp)
    pl.move_arm_local(REST_ARM, 2)


def _push_pull(
    rng: np.random.Generator, pl: AgentPlan, obj: Entity, platform: Entity | None, speed: float, *, push: bool
) -> None:
    """Walk to a floor object, put a hand on its near side, then walk forward (push) or
    backward (pull) facing it; the object slides with the hand."""
    stand = _approach_point(pl, obj, 0.30)
    _walk(pl, stand, platform, speed)
    if pl.frames_left < 4:
        return
    c = obj.pos[pl.t]
    pl.turn(_face(pl, c))
    u = c[:2] - pl.e.base[pl.t, :2]
    u /= max(np.linalg.norm(u), 1e-6)
    half = entity_half_xy(obj)[pl.t]
    touch = np.array([*(c[:2] - u * (float(np.abs(u) @ half) + PERSON_HAND_R)), c[2] + min(obj.category.height * 0.6, 0.9)])
    pl.move_arm(touch, 2)
    pl.set_from_now(pl.e.contact, obj.object_id)
    dist = float(rng.uniform(0.6, 1.2)) * (1 if push else -1)
    dur = max(3, int(abs(dist) / (speed * 0.6)))
    goal = pl.e.base[pl.t].copy()
    goal[:2] += u * dist
    facing = float(pl.e.heading[pl.t])
    pl.move_base(goal, min(dur, max(pl.frames_left, 1)), face=facing)
    pl.let_go(pl.e.contact)
    pl.wait(1)
