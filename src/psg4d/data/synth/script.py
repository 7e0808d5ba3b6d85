"""Scripted interactions and the simulated state of one synthetic scene.

A scene is a list of :class:`Entity` (stuff, furniture, movable objects and
agents) whose state is known at every frame: bottom-centre position, yaw, and
for agents an effector (hand) position, heading, posture, and which object the
agent grasps or touches. Agents follow a *plan* (reach, grasp, lift, carry,
put down, push, pull, walk, sit, talk); grasped objects follow the effector,
pushed/pulled ones slide with it. Relation labels are computed from this state
afterwards (:mod:`psg4d.data.synth.relations`), never drawn at random.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from psg4d.data.synth.camera import Camera
from psg4d.data.synth.render import Lighting, Primitive
from psg4d.data.synth.world import CATEGORIES, Category, Part

ROLE_STUFF, ROLE_FURNITURE, ROLE_OBJECT, ROLE_AGENT = "stuff", "furniture", "object", "agent"
PALM_R = 0.04  # hoi hand (palm sphere radius)
PERSON_R = 0.17  # person body capsule radius
PERSON_HAND_R = 0.05
SKIN = (0.85, 0.62, 0.50)
GTA_REGION = (-2.0, 2.0, 1.5, 4.6)  # x0, x1, y0, y1 of the floor area in view (metres)
# A person's effector offsets are relative to the shoulder (right, forward, up), so
# sitting down lowers the hand with the body instead of moving it relative to the arm.
REST_ARM = np.array([PERSON_R + 0.08, 0.05, -0.45])  # hand hanging at the right side
SHOULDER_HEIGHT = {0: 1.25, 1: 0.70}  # above the base: standing (feet) / sitting (seat)


@dataclass(kw_only=True)
class Entity:
    """One object of the scene and its state over the T frames."""

    object_id: int
    category: Category
    role: str
    pos: np.ndarray  # [T, 3] bottom centre
    yaw: np.ndarray  # [T]
    color: np.ndarray  # (3,) instance colour
    color2: np.ndarray
    # agents only
    effector: np.ndarray | None = None  # [T, 3] hand position
    base: np.ndarray | None = None  # [T, 3] hand: shoulder; person: body bottom centre
    heading: np.ndarray | None = None  # [T] facing yaw
    posture: np.ndarray | None = None  # [T] 0 standing, 1 sitting
    shoulder: np.ndarray | None = None  # [T, 3] where the arm starts (reaching is measured from here)
    grasp: np.ndarray | None = None  # [T] object id held (-1 none)
    contact: np.ndarray | None = None  # [T] object id pushed/pulled (-1 none)
    clothes: np.ndarray | None = None

    @property
    def name(self) -> str:
        return self.category.name

    @property
    def is_agent(self) -> bool:
        return self.role == ROLE_AGENT


@dataclass(kw_only=True)
class Room:
    back_wall_y: float
    side_wall_x: float
    floor_color: np.ndarray
    floor_color2: np.ndarray
    wall_color: np.ndarray
    floor_period: float


@dataclass(kw_only=True)
class Scene:
    preset: str
    num_frames: int
    entities: list[Entity]
    camera: Camera
    lighting: Lighting
    room: Room
    fps: float
    meta: dict = field(default_factory=dict)

    def by_id(self) -> dict[int, Entity]:
        return {e.object_id: e for e in self.entities}


# --------------------------------------------------------------------------- geometry


def heading_axes(h: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Forward and right unit vectors (xy) for heading ``h`` (0 = +y, positive turns toward +x)."""
    h = np.asarray(h, dtype=np.float64)
    fwd = np.stack([np.sin(h), np.cos(h)], -1)
    right = np.stack([np.cos(h), -np.sin(h)], -1)
    return fwd, right


def part_centers(e: Entity, part: Part) -> np.ndarray:
    """``[T, 3]`` world centre of one part of a (non-agent) entity."""
    c, s = np.cos(e.yaw), np.sin(e.yaw)
    ox, oy, oz = part.offset
    # yaw rotates the object frame like the camera's: x' = x cos + y sin, y' = -x sin + y cos
    return e.pos + np.stack([c * ox + s * oy, -s * ox + c * oy, np.full_like(c, oz)], -1)


def part_tops(e: Entity) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]]:
    """Per part: top z ``[T]``, footprint centre ``[T, 2]``, half extents ``[T, 2]`` (axis-aligned
    bound of the yawed footprint), flat (a flat top can carry things)."""
    out = []
    for p in e.category.parts:
        c = part_centers(e, p)
        if p.shape == "box":
            hx, hy, hz = p.dims[0] / 2, p.dims[1] / 2, p.dims[2] / 2
            cy, sy = np.abs(np.cos(e.yaw)), np.abs(np.sin(e.yaw))
            half = np.stack([cy * hx + sy * hy, sy * hx + cy * hy], -1)
            out.append((c[:, 2] + hz, c[:, :2], half, True))
        elif p.shape == "cylinder":
            r, h = p.dims
            out.append((c[:, 2] + h / 2, c[:, :2], np.full((len(c), 2), r), True))
        elif p.shape == "sphere":
            r = p.dims[0]
            out.append((c[:, 2] + r, c[:, :2], np.full((len(c), 2), r), False))
        else:
            r, h = p.dims
            out.append((c[:, 2] + h / 2, c[:, :2], np.full((len(c), 2), r), False))
    return out


def entity_half_xy(e: Entity) -> np.ndarray:
    """``[T, 2]`` half extents of the entity's footprint (axis-aligned bound)."""
    if e.is_agent:
        return np.full((len(e.pos), 2), PERSON_R if e.name == "person" else PALM_R)
    tops = part_tops(e)
    lo = np.min([c - h for _, c, h, _ in tops], axis=0)
    hi = np.max([c + h for _, c, h, _ in tops], axis=0)
    return np.maximum(hi - e.pos[:, :2], e.pos[:, :2] - lo)


def entity_center(e: Entity) -> np.ndarray:
    """``[T, 3]`` a representative 3D centre (the middle of the object's height)."""
    if e.is_agent:
        if e.name == "hand":
            return e.effector.copy()
        c = e.pos.copy()
        c[:, 2] += np.where(e.posture == 1, 0.8, 0.9)
        return c
    c = e.pos.copy()
    c[:, 2] += e.category.height / 2
    return c


# --------------------------------------------------------------------------- primitives


def entity_primitives(e: Entity, room: Room) -> list[Primitive]:
    """The ray-castable primitives of an entity (its panoptic id is its object id)."""
    if e.role == ROLE_STUFF:
        if e.name == "floor":
            return [
                Primitive(
                    kind="plane", instance=e.object_id, color=room.floor_color, color2=room.floor_color2,
                    texture="checker", period=room.floor_period, center=np.zeros(3), normal=np.array([0.0, 0.0, 1.0]),
                )
            ]  # fmt: skip
        walls = []
        for point, normal in (
            ((0.0, room.back_wall_y, 0.0), (0.0, -1.0, 0.0)),
            ((room.side_wall_x, 0.0, 0.0), (-1.0, 0.0, 0.0)),
            ((-room.side_wall_x, 0.0, 0.0), (1.0, 0.0, 0.0)),
            ((0.0, -room.back_wall_y, 0.0), (0.0, 1.0, 0.0)),
        ):
            walls.append(_solid("plane", e.object_id, room.wall_color, center=np.array(point), normal=np.array(normal)))
        return walls
    if e.is_agent:
        return _agent_primitives(e)
    prims = []
    for p in e.category.parts:
        c = part_centers(e, p)
        look = dict(
            kind=p.shape, instance=e.object_id, color=e.color * p.shade, color2=e.color2 * p.shade,
            texture=e.category.texture,
        )  # fmt: skip
        # texture period: a few stripes/checks across the part whatever its size
        if p.shape == "box":
            prims.append(Primitive(**look, period=max(min(p.dims) / 1.5, 0.02), center=c,
                                   size=tuple(d / 2 for d in p.dims), yaw=e.yaw))  # fmt: skip
        elif p.shape == "sphere":
            prims.append(Primitive(**look, period=p.dims[0] / 1.5, center=c, size=(p.dims[0],)))
        elif p.shape == "cylinder":
            prims.append(Primitive(**look, period=max(p.dims[1] / 4, 0.02), center=c, size=(p.dims[0], p.dims[1] / 2)))
        else:
            r, h = p.dims
            a = c.copy()
            b = c.copy()
            a[:, 2] -= h / 2 - r
            b[:, 2] += h / 2 - r
            prims.append(Primitive(**look, period=h / 5, a=a, b=b, size=(r,)))
    return prims


def _solid(kind: str, instance: int, color: np.ndarray, **geometry) -> Primitive:
    """An untextured primitive (walls, body parts of agents)."""
    return Primitive(kind=kind, instance=instance, color=color, color2=color, **geometry)


def _agent_primitives(e: Entity) -> list[Primitive]:
    skin = np.asarray(SKIN)
    if e.name == "hand":
        # forearm from the shoulder side toward the palm
        d = e.base - e.effector
        d /= np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-6)
        wrist = e.effector + d * (PALM_R * 1.2)
        elbow = e.effector + d * 0.34
        return [
            _solid("sphere", e.object_id, skin, center=e.effector, size=(PALM_R,)),
            _solid("capsule", e.object_id, e.clothes, a=wrist, b=elbow, size=(0.032,)),
        ]
    fwd, right = heading_axes(e.heading)
    sit = e.posture == 1
    hip_z = e.pos[:, 2]  # sitting: the pelvis rests on the seat, so pos z is the seat height
    body_a = e.pos.copy()
    body_a[:, 2] = hip_z + PERSON_R
    body_b = e.pos.copy()
    body_b[:, 2] = hip_z + np.where(sit, 0.75, 1.30)
    head = body_b.copy()
    head[:, 2] += PERSON_R + 0.11
    nose = head.copy()
    nose[:, :2] += fwd * 0.11
    nose[:, 2] -= 0.01
    shoulder = body_b.copy()
    shoulder[:, :2] += right * (PERSON_R + 0.04)
    shoulder[:, 2] -= 0.05
    feet = e.pos.copy()
    feet[:, :2] += np.where(sit[:, None], fwd * 0.45, 0.0)
    feet[:, 2] = np.where(sit, e.pos[:, 2] - 0.42 + 0.06, e.pos[:, 2] + 0.06)
    feet[:, 2] = np.maximum(feet[:, 2], 0.06)
    legs_top = e.pos.copy()
    legs_top[:, 2] = hip_z + 0.12
    legs_top[:, :2] += np.where(sit[:, None], fwd * 0.15, 0.0)
    pants = e.clothes * 0.55
    return [
        _solid("capsule", e.object_id, e.clothes, a=body_a, b=body_b, size=(PERSON_R,)),
        _solid("capsule", e.object_id, pants, a=feet, b=legs_top, size=(0.09,)),
        _solid("sphere", e.object_id, skin, center=head, size=(0.12,)),
        _solid("sphere", e.object_id, skin * 0.8, center=nose, size=(0.04,)),
        _solid("capsule", e.object_id, e.clothes, a=shoulder, b=e.effector, size=(0.045,)),
        _solid("sphere", e.object_id, skin, center=e.effector, size=(PERSON_HAND_R,)),
    ]


def scene_primitives(scene: Scene) -> list[Primitive]:
    out: list[Primitive] = []
    for e in scene.entities:
        out.extend(entity_primitives(e, scene.room))
    return out


# --------------------------------------------------------------------------- plans


class AgentPlan:
    """Fills an agent's per-frame arrays segment by segment from a cursor ``t``.

    Every operation writes frames ``t+1 .. t+dur`` and holds the last value for the
    rest of the video, so a plan can stop at any point and stays consistent.
    The effector is stored relative to the base in the agent's heading frame
    (right, forward, up), so that a carried object turns with a walking person.
    """

    def __init__(self, agent: Entity, T: int):
        self.e = agent
        self.T = T
        self.t = 0
        self.local = np.zeros((T, 3))  # effector offset in (right, forward, up)

    @property
    def frames_left(self) -> int:
        return self.T - 1 - self.t

    def _write(self, arr: np.ndarray, values: np.ndarray) -> None:
        n = len(values)
        end = min(self.t + 1 + n, self.T)
        arr[self.t + 1 : end] = values[: end - self.t - 1]
        arr[end:] = arr[end - 1]

    def shoulder(self, t: int) -> np.ndarray:
        if self.e.name != "person":
            return self.e.base[t]
        return self.e.base[t] + np.array([0.0, 0.0, SHOULDER_HEIGHT[int(self.e.posture[t])]])

    def eff_world(self, t: int) -> np.ndarray:
        fwd, right = heading_axes(self.e.heading[t])
        loc = self.local[t]
        off = np.array([right[0] * loc[0] + fwd[0] * loc[1], right[1] * loc[0] + fwd[1] * loc[1], loc[2]])
        return self.shoulder(t) + off

    def to_local(self, world: np.ndarray, t: int) -> np.ndarray:
        fwd, right = heading_axes(self.e.heading[t])
        d = world - self.shoulder(t)
        return np.array([d[0] * right[0] + d[1] * right[1], d[0] * fwd[0] + d[1] * fwd[1], d[2]])

    def move_arm(self, target: np.ndarray, dur: int) -> None:
        start = self.local[self.t]
        goal = self.to_local(target, self.t)
        s = np.arange(1, dur + 1)[:, None] / dur
        self._write(self.local, start + s * (goal - start))
        self.t = min(self.t + dur, self.T - 1)

    def move_arm_local(self, goal: np.ndarray, dur: int) -> None:
        """Move the effector to ``goal`` given in the agent's own (right, forward, up) frame."""
        start = self.local[self.t]
        s = np.arange(1, dur + 1)[:, None] / dur
        self._write(self.local, start + s * (np.asarray(goal) - start))
        self.t = min(self.t + dur, self.T - 1)

    def move_base(self, target: np.ndarray, dur: int, *, face: float | None = None) -> None:
        """Walk (base translation) to ``target`` over ``dur`` frames, facing the motion."""
        start = self.e.base[self.t].copy()
        d = target - start
        h = math.atan2(d[0], d[1]) if face is None else face
        s = np.arange(1, dur + 1)[:, None] / dur
        self._write(self.e.base, start + s * d)
        self._write(self.e.heading, np.full(dur, h))
        self._write(self.local, np.repeat(self.local[self.t][None], dur, 0))
        self.t = min(self.t + dur, self.T - 1)

    def turn(self, heading: float) -> None:
        self.e.heading[self.t :] = heading

    def wait(self, dur: int) -> None:
        self.t = min(self.t + dur, self.T - 1)

    def set_from_now(self, arr: np.ndarray, value) -> None:
        arr[self.t :] = value

    def let_go(self, arr: np.ndarray) -> None:
        """End a grasp or contact after the current frame: the object still follows the
        effector into this frame (where the last movement ended), then stays put."""
        arr[self.t + 1 :] = -1


def apply_attachments(scene: Scene) -> None:
    """Move grasped objects with their agent's effector and pushed/pulled ones with its
    horizontal motion (offsets fixed when the grasp/contact begins)."""
    by_id = scene.by_id()
    agents = [e for e in scene.entities if e.is_agent]
    offsets: dict[tuple[int, str], np.ndarray] = {}  # (agent, grasp|contact) -> object - effector
    for t in range(scene.num_frames):
        for a in agents:
            for kind in ("grasp", "contact"):
                arr = getattr(a, kind)
                oid = int(arr[t])
                if oid < 0:
                    continue
                obj = by_id[oid]
                if t == 0 or int(arr[t - 1]) != oid:
                    offsets[a.object_id, kind] = obj.pos[t] - a.effector[t]
                off = offsets[a.object_id, kind]
                if kind == "grasp":
                    new = a.effector[t] + off
                else:
                    new = obj.pos[t].copy()
                    new[:2] = a.effector[t, :2] + off[:2]
                obj.pos[t:] = new  # later frames hold until moved again


# --------------------------------------------------------------------------- scene building


def _jitter_color(rng: np.random.Generator, c) -> np.ndarray:
    return np.clip(np.asarray(c) * rng.uniform(0.88, 1.12, size=3), 0, 1)


def make_entity(rng: np.random.Generator, oid: int, cat: Category, role: str, T: int, xyz, yaw: float = 0.0) -> Entity:
    return Entity(
        object_id=oid,
        category=cat,
        role=role,
        pos=np.repeat(np.asarray(xyz, dtype=np.float64)[None], T, 0),
        yaw=np.full(T, float(yaw)),
        color=_jitter_color(rng, cat.color),
        color2=_jitter_color(rng, cat.color2),
    )


def make_lighting(rng: np.random.Generator) -> Lighting:
    az = rng.uniform(-math.pi, math.pi)
    el = rng.uniform(math.radians(35), math.radians(75))
    d = (math.cos(el) * math.sin(az), math.cos(el) * math.cos(az), math.sin(el))
    tint = tuple(float(v) for v in rng.uniform(0.92, 1.08, size=3))
    return Lighting(direction=d, ambient=float(rng.uniform(0.30, 0.48)), diffuse=float(rng.uniform(0.50, 0.72)), tint=tint)


def make_camera(
    rng: np.random.Generator, T: int, size: int, *, pos, yaw: float, pitch: float, fov: float, motion: bool, scale: float
) -> Camera:
    s = np.linspace(0.0, 1.0, T)[:, None]
    position = np.repeat(np.asarray(pos, dtype=np.float64)[None], T, 0)
    yaws = np.full(T, yaw)
    pitches = np.full(T, pitch)
    if motion:
        # slow drift plus a little hand-held shake
        drift = rng.uniform(-1, 1, size=3) * np.array([0.08, 0.05, 0.03]) * scale
        position = position + s * drift
        yaws = yaws + s[:, 0] * rng.uniform(-0.08, 0.08)
        pitches = pitches + s[:, 0] * rng.uniform(-0.04, 0.04)
        shake = rng.normal(0, 0.004 * scale, size=(T, 3))
        position = position + shake
    return Camera(position=position, yaw=yaws, pitch=pitches, fov_deg=fov, height=size, width=size)


@dataclass(frozen=True, kw_only=True)
class ScriptOptions:
    """What a scene may contain (set by the preset and the split)."""

    num_frames: int
    size: int
    camera_motion: bool
    min_objects: int
    max_objects: int
    categories: tuple[str, ...]  # movable object categories allowed
    force_category: str | None = None  # include this one (held-out categories in the test split)
    fps: float = 5.0


def _place_free(
    rng: np.random.Generator,
    half: tuple[float, float],
    region: tuple[float, float, float, float],
    taken: list[tuple[float, float, float, float]],
    gap: float,
    tries: int = 40,
) -> tuple[float, float] | None:
    """A random xy inside ``region`` (x0, x1, y0, y1) whose footprint keeps ``gap`` from
    every taken footprint (x, y, hx, hy); ``None`` when no spot is found."""
    x0, x1, y0, y1 = region
    for _ in range(tries):
        x = rng.uniform(x0 + half[0], x1 - half[0])
        y = rng.uniform(y0 + half[1], y1 - half[1])
        if all(abs(x - tx) > half[0] + hx + gap or abs(y - ty) > half[1] + hy + gap for tx, ty, hx, hy in taken):
            return float(x), float(y)
    return None


def _pick_categories(rng: np.random.Generator, opts: ScriptOptions, n: int) -> list[Category]:
    names = list(opts.categories)
    chosen: list[str] = []
    if opts.force_category is not None:
        chosen.append(opts.force_category)
    pool = [c for c in names if c not in chosen]
    k = min(n - len(chosen), len(pool))
    chosen += [pool[i] for i in rng.choice(len(pool), size=k, replace=False)]
    order = rng.permutation(len(chosen))
    return [CATEGORIES[chosen[i]] for i in order]


def _room(rng: np.random.Generator, *, back: float, side: float, floor_period: float) -> Room:
    floor = rng.uniform(0.35, 0.7, size=3)
    return Room(
        back_wall_y=back,
        side_wall_x=side,
        floor_color=floor,
        floor_color2=floor * rng.uniform(0.7, 0.85),
        wall_color=rng.uniform(0.55, 0.9, size=3),
        floor_period=floor_period,
    )


# --------------------------------------------------------------------------- hoi


def build_hoi(rng: np.random.Generator, opts: ScriptOptions) -> Scene:
    """Egocentric hand-object manipulation on a table (PSG4D-HOI-like)."""
    T = opts.num_frames
    ents: list[Entity] = []
    ents.append(make_entity(rng, 1, CATEGORIES["floor"], ROLE_STUFF, T, (0, 0, 0)))
    ents.append(make_entity(rng, 2, CATEGORIES["wall"], ROLE_STUFF, T, (0, 0, 0)))
    table_xy = rng.uniform(-0.06, 0.06, size=2)
    table = make_entity(rng, 3, CATEGORIES["table"], ROLE_FURNITURE, T, (table_xy[0], table_xy[1], 0.0))
    ents.append(table)
    top_z = table.category.height
    thx, thy = table.category.footprint
    region = (table_xy[0] - thx + 0.08, table_xy[0] + thx - 0.08, table_xy[1] - thy + 0.12, table_xy[1] + thy - 0.12)
    n = int(rng.integers(opts.min_objects, opts.max_objects + 1))
    taken: list[tuple[float, float, float, float]] = []
    oid = 10
    for cat in _pick_categories(rng, opts, n):
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
            xy = _place_free(rng, half, region, taken, 0.03)
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
    room = _room(rng, back=table_xy[1] + thy + rng.uniform(0.3, 0.9), side=rng.uniform(1.2, 1.8), floor_period=0.4)
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


def _dur(rng: np.random.Generator, T: int, lo: float, hi: float) -> int:
    """A phase length in frames, proportional to the video length, at least 2."""
    return max(2, int(round(rng.uniform(lo, hi) * T / 16)))


def _script_hoi(rng: np.random.Generator, scene: Scene, plan: AgentPlan, region, top_z: float) -> None:
    T = scene.num_frames
    objs = [e for e in scene.entities if e.role == ROLE_OBJECT]
    # where the plan believes each object is (its bottom centre); updated by the actions
    where = {e.object_id: e.pos[0].copy() for e in objs}
    supported_by = {e.object_id: None for e in objs}
    for e in objs:
        for s in objs:
            stacked = abs(where[e.object_id][2] - (where[s.object_id][2] + s.category.height)) < 1e-6
            if s is not e and stacked and np.allclose(where[e.object_id][:2], where[s.object_id][:2]):
                supported_by[e.object_id] = s.object_id

    def collides(oid: int, xy: np.ndarray, half: np.ndarray) -> bool:
        others = [(*where[o.object_id][:2], *entity_half_xy(o)[0]) for o in objs if o.object_id != oid]
        x0, x1, y0, y1 = region
        inside = x0 + half[0] < xy[0] < x1 - half[0] and y0 + half[1] < xy[1] < y1 - half[1]
        return not inside or any(
            abs(xy[0] - ox) <= half[0] + hx + 0.02 and abs(xy[1] - oy) <= half[1] + hy + 0.02 for ox, oy, hx, hy in others
        )

    plan.wait(int(rng.integers(0, max(1, T // 8) + 1)))
    actions = ["pick_place", "pick_hold", "push", "pull"]
    weights = np.array([0.4, 0.15, 0.225, 0.225])
    for _attempt in range(6):
        if plan.frames_left < 6:
            break
        action = actions[int(rng.choice(len(actions), p=weights))]
        # objects with nothing on top can be moved
        free = [e for e in objs if all(supported_by[o] != e.object_id for o in supported_by)]
        if not free:
            break
        e = free[int(rng.integers(len(free)))]
        oid = e.object_id
        h = e.category.height
        half = entity_half_xy(e)[0]
        p = where[oid]
        if action in ("pick_place", "pick_hold"):
            grip = p + np.array([0.0, 0.0, h + PALM_R * 0.9])
            plan.move_arm(grip, _dur(rng, T, 2, 3.5))
            plan.set_from_now(plan.e.grasp, oid)
            lift = float(rng.uniform(0.10, 0.18))
            plan.move_arm(grip + np.array([0, 0, lift]), _dur(rng, T, 2, 2.5))
            supported_by[oid] = None
            if action == "pick_hold" or plan.frames_left < 5:
                plan.wait(_dur(rng, T, 2, 3))
                where[oid] = p + np.array([0, 0, lift])
                break  # the hand keeps holding it to the end
            # sometimes stack it on a flat object (a new "on" between two things, from then on)
            flats = [
                f for f in objs
                if f.object_id != oid and f.category.parts[0].shape == "box" and f.category.height < 0.06
                and supported_by[f.object_id] is None
                and all(supported_by[o] != f.object_id for o in supported_by)
                and np.all(entity_half_xy(f)[0] > half + 0.005)
            ]  # fmt: skip
            if flats and rng.random() < 0.4:
                f = flats[int(rng.integers(len(flats)))]
                dest = where[f.object_id] + np.array([0.0, 0.0, f.category.height])
                supported_by[oid] = f.object_id
            else:
                taken = [(*where[o.object_id][:2], *entity_half_xy(o)[0]) for o in objs if o.object_id != oid]
                xy = _place_free(rng, tuple(half), region, taken, 0.04)
                if xy is None:
                    xy = (p[0], p[1])
                dest = np.array([xy[0], xy[1], top_z])
            plan.move_arm(dest + np.array([0, 0, h + PALM_R * 0.9 + lift]), _dur(rng, T, 2.5, 4))
            plan.move_arm(dest + np.array([0, 0, h + PALM_R * 0.9]), _dur(rng, T, 2, 2.5))
            plan.let_go(plan.e.grasp)
            where[oid] = dest
            plan.move_arm(dest + np.array([0, -0.1, h + 0.15]), _dur(rng, T, 1.5, 2.5))
        else:
            shoulder = plan.e.base[plan.t]
            u = p[:2] - shoulder[:2]
            u /= max(np.linalg.norm(u), 1e-6)
            reach = float(np.abs(u) @ half) + PALM_R
            dist = float(rng.uniform(0.08, 0.16))
            sign = 1.0 if action == "push" else -1.0
            if collides(oid, p[:2] + sign * u * dist, half):
                # blocked (table edge or another object): try the other direction
                sign = -sign
                action = "pull" if action == "push" else "push"
                if collides(oid, p[:2] + sign * u * dist, half):
                    continue
            dest_xy = p[:2] + sign * u * dist
            z = p[2] + min(h * 0.5, 0.05) + 0.005
            near_side = np.array([*(p[:2] - u * reach), z])
            far_side = np.array([*(p[:2] + u * reach), z])
            if action == "push":
                plan.move_arm(near_side, _dur(rng, T, 2, 3.5))
            else:
                plan.move_arm(np.array([*(p[:2] + u * reach), p[2] + h + 0.08]), _dur(rng, T, 2, 3))
                plan.move_arm(far_side, 2)
            plan.set_from_now(plan.e.contact, oid)
            contact_pt = near_side if action == "push" else far_side
            plan.move_arm(np.array([*(contact_pt[:2] + sign * u * dist), z]), _dur(rng, T, 2, 3.5))
            plan.let_go(plan.e.contact)
            where[oid] = np.array([dest_xy[0], dest_xy[1], p[2]])
            back = plan.eff_world(plan.t) + np.array([*(-u * 0.08), 0.1])
            plan.move_arm(back, 2)


# --------------------------------------------------------------------------- gta


def build_gta(rng: np.random.Generator, opts: ScriptOptions) -> Scene:
    """Third-person room with people, furniture and carryable objects (PSG4D-GTA-like)."""
    T = opts.num_frames
    ents: list[Entity] = []
    ents.append(make_entity(rng, 1, CATEGORIES["floor"], ROLE_STUFF, T, (0, 0, 0)))
    ents.append(make_entity(rng, 2, CATEGORIES["wall"], ROLE_STUFF, T, (0, 0, 0)))
    region = GTA_REGION
    taken: list[tuple[float, float, float, float]] = []
    oid = 3

    def add(cat: Category, role: str, *, yaw: float = 0.0, z: float = 0.0, near_back: bool = False) -> Entity | None:
        nonlocal oid
        e = make_entity(rng, oid, cat, role, T, (0, 0, z), yaw)
        half = tuple(entity_half_xy(e)[0])
        reg = (region[0], region[1], region[2] + 1.2, region[3]) if near_back else region
        xy = _place_free(rng, half, reg, taken, 0.35)
        if xy is None:
            return None
        e.pos[:, :2] = xy
        taken.append((xy[0], xy[1], half[0], half[1]))
        ents.append(e)
        oid += 1
        return e

    table = add(CATEGORIES["table"], ROLE_FURNITURE, yaw=float(rng.choice([0.0, math.pi / 2])), near_back=True)
    seat_name = ("chair", "sofa", "stool")[int(rng.integers(3))]
    seat = add(CATEGORIES[seat_name], ROLE_FURNITURE, yaw=float(rng.choice([0.0, math.pi, math.pi / 2, -math.pi / 2])))
    platform = None
    if rng.random() < 0.5:
        platform = add(CATEGORIES[("rug", "step")[int(rng.integers(2))]], ROLE_FURNITURE)
    n = int(rng.integers(opts.min_objects, opts.max_objects + 1))
    objs: list[Entity] = []
    for cat in _pick_categories(rng, opts, n):
        on_table = table is not None and cat.height < 0.35 and rng.random() < 0.5 and not any(
            abs(o.pos[0, 2] - table.category.height) < 1e-6 for o in objs
        )
        if on_table:
            e = make_entity(rng, oid, cat, ROLE_OBJECT, T, (0, 0, table.category.height), 0.0)
            e.pos[:, :2] = table.pos[0, :2] + rng.uniform(-0.25, 0.25, size=2) * np.array([1.0, 0.4])
            ents.append(e)
            oid += 1
        else:
            e = add(cat, ROLE_OBJECT, yaw=float(rng.uniform(-0.4, 0.4)) if cat.parts[0].shape == "box" else 0.0)
            if e is None:
                continue
        objs.append(e)
    n_people = int(rng.choice([1, 2, 2, 3]))
    people: list[Entity] = []
    for _ in range(n_people):
        cat = CATEGORIES["person"]
        e = make_entity(rng, oid, cat, ROLE_AGENT, T, (0, 0, 0))
        xy = _place_free(rng, (0.25, 0.25), GTA_REGION, taken, 0.1)
        if xy is None:
            continue
        taken.append((xy[0], xy[1], 0.3, 0.3))
        oid += 1
        e.base = np.repeat(np.array([xy[0], xy[1], 0.0])[None], T, 0)
        e.pos = e.base  # the person's position is its base (shared array)
        e.heading = np.full(T, float(rng.uniform(-math.pi, math.pi)))
        e.posture = np.zeros(T, dtype=np.int64)
        e.grasp = np.full(T, -1, dtype=np.int64)
        e.contact = np.full(T, -1, dtype=np.int64)
        e.clothes = rng.uniform(0.1, 0.9, size=3)
        ents.append(e)
        people.append(e)
    cam_pos = (rng.uniform(-0.3, 0.3), rng.uniform(-0.6, -0.2), rng.uniform(1.5, 1.8))
    camera = make_camera(
        rng, T, opts.size, pos=cam_pos, yaw=float(rng.uniform(-0.1, 0.1)), pitch=float(rng.uniform(-0.32, -0.22)),
        fov=60.0, motion=opts.camera_motion, scale=3.0,
    )  # fmt: skip
    room = _room(rng, back=rng.uniform(6.0, 7.0), side=rng.uniform(3.0, 4.0), floor_period=0.6)
    scene = Scene(
        preset="gta", num_frames=T, entities=ents, camera=camera, lighting=make_lighting(rng), room=room, fps=opts.fps
    )
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
    x0, x1, y0, y1 = GTA_REGION
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
    pl.move_arm(grip, _dur(rng, T, 2, 3))
    pl.set_from_now(pl.e.grasp, obj.object_id)
    pl.move_arm(grip + np.array([0, 0, float(rng.uniform(0.2, 0.35))]), 2)
    if pl.frames_left < 4:
        return
    # carry the object in front, walking to a free floor spot, then put it down there
    d = rng.uniform(-1, 1, size=2)
    d /= max(np.linalg.norm(d), 1e-6)
    dest = pl.e.base[pl.t, :2] + d * float(rng.uniform(0.6, 1.2))
    dest = np.clip(dest, [GTA_REGION[0], GTA_REGION[2]], [GTA_REGION[1], GTA_REGION[3]])
    _walk(pl, dest, platform, speed)
    if pl.frames_left < 3:
        return
    down = pl.eff_world(pl.t).copy()
    # lower until the object's bottom reaches the floor (or the platform under it)
    down[2] = _platform_z(platform, down[:2]) + h + PERSON_HAND_R * 0.9
    pl.move_arm(down, _dur(rng, T, 2, 3))
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


def build_scene(preset: str, rng: np.random.Generator, opts: ScriptOptions) -> Scene:
    return BUILDERS[preset](rng, opts)


BUILDERS = {"hoi": build_hoi, "gta": build_gta}

__all__ = ["Entity", "Scene", "ScriptOptions", "build_scene", "scene_primitives"]
