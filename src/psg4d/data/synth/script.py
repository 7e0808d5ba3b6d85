"""Scripted interactions and the simulated state of one synthetic scene: what both presets share.

A scene is a list of :class:`Entity` (stuff, furniture, movable objects and
agents) whose state is known at every frame: bottom-centre position, yaw, and
for agents an effector (hand) position, heading, posture, and which object the
agent grasps or touches. Agents follow a *plan* (:class:`AgentPlan`: reach,
grasp, lift, carry, put down, push, pull, walk, sit); grasped objects follow the
effector, pushed/pulled ones slide with it. Each preset module scripts its own
scenes with these pieces (:mod:`psg4d.data.synth.preset_hoi`,
:mod:`psg4d.data.synth.preset_gta`). Relation labels are computed from this
state afterwards (:mod:`psg4d.data.synth.relations`), never drawn at random.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from psg4d.data.synth.camera import Camera
from psg4d.data.synth.render import Lighting
from psg4d.data.synth.world import CATEGORIES, Category, Part

ROLE_STUFF, ROLE_FURNITURE, ROLE_OBJECT, ROLE_AGENT = "stuff", "furniture", "object", "agent"
PALM_R = 0.04  # hoi hand (palm sphere radius)
PERSON_R = 0.17  # person body capsule radius
PERSON_HAND_R = 0.05
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


def stuff_entities(rng: np.random.Generator, T: int) -> list[Entity]:
    """The floor (object id 1) and the walls (object id 2) every scene starts with."""
    return [
        make_entity(rng, 1, CATEGORIES["floor"], ROLE_STUFF, T, (0, 0, 0)),
        make_entity(rng, 2, CATEGORIES["wall"], ROLE_STUFF, T, (0, 0, 0)),
    ]


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
    force_category: str | None = None  # include this one (a held-out or novel category in the test split)
    fps: float = 5.0


def place_free(
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


def pick_categories(rng: np.random.Generator, opts: ScriptOptions, n: int) -> list[Category]:
    names = list(opts.categories)
    chosen: list[str] = []
    if opts.force_category is not None:
        chosen.append(opts.force_category)
    pool = [c for c in names if c not in chosen]
    k = min(n - len(chosen), len(pool))
    chosen += [pool[i] for i in rng.choice(len(pool), size=k, replace=False)]
    order = rng.permutation(len(chosen))
    return [CATEGORIES[chosen[i]] for i in order]


def make_room(rng: np.random.Generator, *, back: float, side: float, floor_period: float) -> Room:
    floor = rng.uniform(0.35, 0.7, size=3)
    return Room(
        back_wall_y=back,
        side_wall_x=side,
        floor_color=floor,
        floor_color2=floor * rng.uniform(0.7, 0.85),
        wall_color=rng.uniform(0.55, 0.9, size=3),
        floor_period=floor_period,
    )


def phase_frames(rng: np.random.Generator, T: int, lo: float, hi: float) -> int:
    """A phase length in frames, proportional to the video length, at least 2."""
    return max(2, int(round(rng.uniform(lo, hi) * T / 16)))
