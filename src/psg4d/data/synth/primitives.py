"""The ray-castable primitives of a simulated scene: what :mod:`psg4d.data.synth.render` draws.

Stuff becomes planes, objects one primitive per part (textured), agents a few
untextured capsules and spheres (a hand and forearm; a person's body, legs,
head, arm and hand). Every primitive carries its entity's object id as its
panoptic instance id.
"""

from __future__ import annotations

import numpy as np

from psg4d.data.synth.render import Primitive
from psg4d.data.synth.script import (
    PALM_R,
    PERSON_HAND_R,
    PERSON_R,
    ROLE_STUFF,
    Entity,
    Room,
    Scene,
    heading_axes,
    part_centers,
)
from psg4d.data.synth.world import SKIN_TONE


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
    skin = np.asarray(SKIN_TONE)
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
