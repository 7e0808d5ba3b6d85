"""The ray-castable primitives and their exact ray geometry, in numpy.

:class:`Primitive` describes one shape (plane, sphere, vertical cylinder, yawed
box, capsule) whose pose may change every frame. :func:`intersect` finds the
first hit of many rays at once (arrays ``[F, ...]`` per direction component);
:func:`normal_and_local` gives the surface normal and texture coordinates of hit
points, :func:`aabb` a primitive's per-frame bounds for culling. Rendering
(visibility, shading, shadows, noise) is :mod:`psg4d.data.synth.render`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NEAR = 0.02  # metres; hits closer than this to the camera are ignored


@dataclass(kw_only=True)
class Primitive:
    """One ray-castable shape belonging to panoptic instance ``instance``.

    Geometry arrays have a leading frame axis of length T (or 1 for static
    shapes, broadcast over frames):

    * ``plane``: ``center`` a point on the plane, ``normal`` (3,)
    * ``sphere``: ``center [T, 3]``, ``size = (r,)``
    * ``cylinder`` (vertical axis): ``center [T, 3]``, ``size = (r, half_height)``
    * ``box``: ``center [T, 3]``, ``size`` half extents (3,), ``yaw [T]``
    * ``capsule``: segment ``a [T, 3]`` .. ``b [T, 3]``, ``size = (r,)``
    """

    kind: str
    instance: int
    color: np.ndarray
    color2: np.ndarray
    texture: str = "solid"
    period: float = 0.1
    center: np.ndarray | None = None
    size: tuple[float, ...] = ()
    yaw: np.ndarray | None = None
    a: np.ndarray | None = None
    b: np.ndarray | None = None
    normal: np.ndarray | None = None

    def at(self, arr: np.ndarray, frames: np.ndarray) -> np.ndarray:
        """``arr`` (leading axis T or 1) for the rendered ``frames`` -> ``[F, ...]`` float32."""
        arr = np.asarray(arr, dtype=np.float32)
        return arr if arr.shape[0] == 1 else arr[frames]


Rays = tuple[np.ndarray, np.ndarray, np.ndarray]


def _components(D: np.ndarray | Rays) -> Rays:
    """Direction components ``dx, dy, dz`` (each ``[F, ...]``) from ``[F, ..., 3]`` or a triple.
    Working per component keeps every array operation contiguous (reductions over a
    trailing axis of 3 were the slowest part of rendering)."""
    if isinstance(D, tuple):
        return D
    return D[..., 0], D[..., 1], D[..., 2]


_INF = np.float32(np.inf)  # the ray parameter of a miss


def _col(v: np.ndarray, like: np.ndarray) -> np.ndarray:
    """A per-frame scalar ``[F]`` shaped to broadcast over the rays of ``like`` (``[F, ...]``)."""
    return v.reshape((len(v),) + (1,) * (like.ndim - 1))


def _hit_plane(p: Primitive, O: np.ndarray, D: Rays, frames: np.ndarray, near: float) -> np.ndarray:
    dx, dy, dz = D
    n = np.asarray(p.normal, dtype=np.float32)
    axis = int(np.abs(n).argmax())
    if np.count_nonzero(n) == 1:  # axis-aligned (floor, walls): one component
        dn = (dx, dy, dz)[axis] * n[axis]
    else:
        dn = dx * n[0] + dy * n[1] + dz * n[2]
    num = (np.asarray(p.center, dtype=np.float32)[None, :] - O) @ n  # [F]
    t = _col(num, dx) / dn
    return np.where((dn < 0) & (t > near), t, _INF)


def _hit_sphere(p: Primitive, O: np.ndarray, D: Rays, frames: np.ndarray, near: float) -> np.ndarray:
    dx, dy, dz = D
    oc = O - p.at(p.center, frames)  # [F, 3]
    DD = dx * dx + dy * dy + dz * dz
    b = dx * _col(oc[:, 0], dx) + dy * _col(oc[:, 1], dx) + dz * _col(oc[:, 2], dx)
    c = _col((oc * oc).sum(-1) - np.float32(p.size[0] ** 2), dx)
    disc = b * b - DD * c
    t = (-b - np.sqrt(disc)) / DD
    return np.where((disc > 0) & (t > near), t, _INF)


def _hit_cylinder(p: Primitive, O: np.ndarray, D: Rays, frames: np.ndarray, near: float) -> np.ndarray:
    dx, dy, dz = D
    r, hh = p.size
    oc = O - p.at(p.center, frames)
    ox, oy, oz = _col(oc[:, 0], dx), _col(oc[:, 1], dx), _col(oc[:, 2], dx)
    a = dx * dx + dy * dy
    b = dx * ox + dy * oy
    c = ox * ox + oy * oy - np.float32(r * r)
    disc = b * b - a * c
    t_side = (-b - np.sqrt(disc)) / a
    z_side = oz + t_side * dz
    t_side = np.where((disc > 0) & (np.abs(z_side) <= hh) & (t_side > near), t_side, _INF)
    # the cap facing the ray origin (the origin is outside the cylinder)
    cap_z = np.where(oz > 0, np.float32(hh), np.float32(-hh))
    t_cap = (cap_z - oz) / dz
    xc, yc = ox + t_cap * dx, oy + t_cap * dy
    t_cap = np.where((xc * xc + yc * yc <= r * r) & (t_cap > near), t_cap, _INF)
    return np.minimum(t_side, t_cap)


def _hit_box(p: Primitive, O: np.ndarray, D: Rays, frames: np.ndarray, near: float) -> np.ndarray:
    dx, dy, dz = D
    oc = O - p.at(p.center, frames)
    yaw = p.at(p.yaw, frames) if p.yaw is not None else np.zeros(len(O), dtype=np.float32)
    cs, sn = np.cos(yaw), np.sin(yaw)
    # origin and directions in the box frame (rotated by -yaw about z)
    o_loc = (cs * oc[:, 0] + sn * oc[:, 1], -sn * oc[:, 0] + cs * oc[:, 1], oc[:, 2])
    d_loc = (_col(cs, dx) * dx + _col(sn, dx) * dy, _col(-sn, dx) * dx + _col(cs, dx) * dy, dz)
    tmin = tmax = None
    for h, o, d in zip(p.size, o_loc, d_loc):  # slabs
        inv = 1.0 / d
        t1 = (np.float32(-h) - _col(o, dx)) * inv
        t2 = (np.float32(h) - _col(o, dx)) * inv
        lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
        tmin = lo if tmin is None else np.maximum(tmin, lo)
        tmax = hi if tmax is None else np.minimum(tmax, hi)
    return np.where((tmax >= tmin) & (tmin > near), tmin, _INF)


def _hit_capsule(p: Primitive, O: np.ndarray, D: Rays, frames: np.ndarray, near: float) -> np.ndarray:
    dx, dy, dz = D
    A, B = p.at(p.a, frames), p.at(p.b, frames)
    r2 = np.float32(p.size[0] ** 2)
    DD = dx * dx + dy * dy + dz * dz
    ba = B - A  # [F, 3]
    oa = O - A
    baba = _col((ba * ba).sum(-1), dx)
    bard = dx * _col(ba[:, 0], dx) + dy * _col(ba[:, 1], dx) + dz * _col(ba[:, 2], dx)
    baoa = _col((ba * oa).sum(-1), dx)
    rdoa = dx * _col(oa[:, 0], dx) + dy * _col(oa[:, 1], dx) + dz * _col(oa[:, 2], dx)
    oaoa = _col((oa * oa).sum(-1), dx)
    qa = baba * DD - bard * bard
    qb = baba * rdoa - baoa * bard
    qc = baba * oaoa - baoa * baoa - r2 * baba
    disc = qb * qb - qa * qc
    t_body = (-qb - np.sqrt(disc)) / qa
    y = baoa + t_body * bard
    body_ok = (disc > 0) & (y > 0) & (y < baba) & (t_body > near)
    t = np.where(body_ok, t_body, _INF)
    for end in (A, B):  # spherical caps
        oc = O - end
        b = dx * _col(oc[:, 0], dx) + dy * _col(oc[:, 1], dx) + dz * _col(oc[:, 2], dx)
        c = _col((oc * oc).sum(-1), dx) - r2
        d2 = b * b - DD * c
        ts = (-b - np.sqrt(d2)) / DD
        t = np.minimum(t, np.where((d2 > 0) & (ts > near), ts, _INF))
    return t


# One exact ray test per primitive kind: (primitive, origins [F, 3], direction components, frames, near) -> t
_HIT_TESTS = {
    "plane": _hit_plane,
    "sphere": _hit_sphere,
    "cylinder": _hit_cylinder,
    "box": _hit_box,
    "capsule": _hit_capsule,
}


def intersect(
    p: Primitive, O: np.ndarray, D: np.ndarray | Rays, frames: np.ndarray, *, near: float = NEAR
) -> np.ndarray:
    """Ray parameters (shape of one direction component, ``[F, ...]``) of the first hit
    with ``p``; ``inf`` = miss. ``O [F, 3]`` origins; ``D`` directions ``[F, ..., 3]`` or
    their components. ``frames``: the rendered frames (indexes ``p``'s per-frame arrays).
    One "frame" per ray works too (``O [N, 3]``, components ``[N]``, ``frames [N]``): shadow
    rays start at their own hit points. Hits closer than ``near`` are ignored."""
    hit_test = _HIT_TESTS.get(p.kind)
    if hit_test is None:
        raise ValueError(f"unknown primitive kind {p.kind!r}")
    rays = _components(D)
    # misses divide by zero and take square roots of negatives: those rays come out inf or nan, then masked
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        return hit_test(p, O, rays, frames, near)


def normal_and_local(p: Primitive, pts: np.ndarray, fidx: np.ndarray, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit normals and texture coordinates (object-local points) of hit points ``pts [N, 3]``
    on frames ``fidx [N]`` (indices into the rendered frames)."""

    def per_hit(arr: np.ndarray) -> np.ndarray:
        a = p.at(arr, frames)
        return a[fidx] if a.shape[0] > 1 else a[0]

    if p.kind == "plane":
        n = np.broadcast_to(np.asarray(p.normal, dtype=np.float32), pts.shape)
        return n, pts
    if p.kind == "sphere":
        local = pts - per_hit(p.center)
        return local / np.float32(p.size[0]), local
    if p.kind == "cylinder":
        r, hh = p.size
        local = pts - per_hit(p.center)
        on_cap = np.abs(local[:, 2]) >= hh - 1e-4
        radial = local.copy()
        radial[:, 2] = 0
        radial /= np.maximum(np.linalg.norm(radial, axis=-1, keepdims=True), 1e-6)
        cap = np.zeros_like(local)
        cap[:, 2] = np.sign(local[:, 2])
        return np.where(on_cap[:, None], cap, radial), local
    if p.kind == "box":
        h = np.asarray(p.size, dtype=np.float32)
        rel = pts - per_hit(p.center)
        yaw = per_hit(p.yaw) if p.yaw is not None else np.zeros(len(pts), dtype=np.float32)
        yaw = np.broadcast_to(yaw, (len(pts),))
        c, s = np.cos(yaw), np.sin(yaw)
        local = np.stack([c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1], rel[:, 2]], -1)
        axis = np.abs(local / h).argmax(-1)
        nl = np.zeros_like(local)
        nl[np.arange(len(pts)), axis] = np.sign(local[np.arange(len(pts)), axis])
        n = np.stack([c * nl[:, 0] - s * nl[:, 1], s * nl[:, 0] + c * nl[:, 1], nl[:, 2]], -1)
        return n, local
    if p.kind == "capsule":
        A, B = per_hit(p.a), per_hit(p.b)
        ba = B - A
        h = np.clip(((pts - A) * ba).sum(-1, keepdims=True) / np.maximum((ba * ba).sum(-1, keepdims=True), 1e-9), 0, 1)
        n = pts - (A + h * ba)
        n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-6)
        return n, pts - A
    raise ValueError(f"unknown primitive kind {p.kind!r}")


def aabb(p: Primitive, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame axis-aligned bounds ``lo, hi [F, 3]`` of a (non-plane) primitive."""
    if p.kind == "capsule":
        A, B = p.at(p.a, frames), p.at(p.b, frames)
        r = np.float32(p.size[0])
        return np.minimum(A, B) - r, np.maximum(A, B) + r
    c = p.at(p.center, frames)
    if p.kind == "sphere":
        ext = np.full(3, p.size[0], dtype=np.float32)
    elif p.kind == "cylinder":
        ext = np.array([p.size[0], p.size[0], p.size[1]], dtype=np.float32)
    else:
        hx, hy, hz = p.size
        yaw = p.at(p.yaw, frames) if p.yaw is not None else np.zeros(len(c), dtype=np.float32)
        ca, sa = np.abs(np.cos(yaw)), np.abs(np.sin(yaw))
        ext = np.stack([ca * hx + sa * hy, sa * hx + ca * hy, np.full_like(ca, hz)], -1)
    return c - ext, c + ext
