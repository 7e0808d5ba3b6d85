"""Vectorised ray casting of primitives in numpy: RGB, z-depth and a panoptic id map.

Every primitive is intersected with all rays of all rendered frames at once
(arrays ``[F, H*W]``); the nearest hit wins each pixel, so occlusion is exact.
Shading (Lambert + ambient, procedural textures) is then computed once per
pixel, grouped by the winning primitive.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from psg4d.data.synth.camera import Camera

NEAR = 0.02  # metres; hits closer than this to the camera are ignored
SHADOW_BIAS = 1e-3  # metres; shadow rays start this far off the surface so it does not shadow itself


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


@dataclass(frozen=True, kw_only=True)
class Lighting:
    direction: tuple[float, float, float]  # unit vector toward the light
    ambient: float
    diffuse: float
    tint: tuple[float, float, float]


@dataclass(kw_only=True)
class RenderOutput:
    rgb: np.ndarray  # [F, H, W, 3] uint8
    depth: np.ndarray  # [F, H, W] float32 metres (0 where no surface)
    ids: np.ndarray  # [F, H, W] int32 instance id (0 where no surface)
    t_min: np.ndarray  # [F, H, W] float32 nearest hit (inf where none); depth before sensor noise


Rays = tuple[np.ndarray, np.ndarray, np.ndarray]


def _components(D: np.ndarray | Rays) -> Rays:
    """Direction components ``dx, dy, dz`` (each ``[F, ...]``) from ``[F, ..., 3]`` or a triple.
    Working per component keeps every array operation contiguous (reductions over a
    trailing axis of 3 were the slowest part of rendering)."""
    if isinstance(D, tuple):
        return D
    return D[..., 0], D[..., 1], D[..., 2]


def intersect(
    p: Primitive, O: np.ndarray, D: np.ndarray | Rays, frames: np.ndarray, *, near: float = NEAR
) -> np.ndarray:
    """Ray parameters (shape of one direction component, ``[F, ...]``) of the first hit
    with ``p``; ``inf`` = miss. ``O [F, 3]`` origins; ``D`` directions ``[F, ..., 3]`` or
    their components. ``frames``: the rendered frames (indexes ``p``'s per-frame arrays).
    One "frame" per ray works too (``O [N, 3]``, components ``[N]``, ``frames [N]``): shadow
    rays start at their own hit points. Hits closer than ``near`` are ignored."""
    dx, dy, dz = _components(D)
    extra = (1,) * (dx.ndim - 1)

    def col(v: np.ndarray) -> np.ndarray:  # per-frame scalar -> broadcastable over rays
        return v.reshape((len(v),) + extra)

    inf = np.float32(np.inf)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if p.kind == "plane":
            n = np.asarray(p.normal, dtype=np.float32)
            axis = int(np.abs(n).argmax())
            if np.count_nonzero(n) == 1:  # axis-aligned (floor, walls): one component
                dn = (dx, dy, dz)[axis] * n[axis]
            else:
                dn = dx * n[0] + dy * n[1] + dz * n[2]
            num = (np.asarray(p.center, dtype=np.float32)[None, :] - O) @ n  # [F]
            t = col(num) / dn
            return np.where((dn < 0) & (t > near), t, inf)
        if p.kind == "sphere":
            oc = O - p.at(p.center, frames)  # [F, 3]
            DD = dx * dx + dy * dy + dz * dz
            b = dx * col(oc[:, 0]) + dy * col(oc[:, 1]) + dz * col(oc[:, 2])
            c = col((oc * oc).sum(-1) - np.float32(p.size[0] ** 2))
            disc = b * b - DD * c
            t = (-b - np.sqrt(disc)) / DD
            return np.where((disc > 0) & (t > near), t, inf)
        if p.kind == "cylinder":
            r, hh = p.size
            oc = O - p.at(p.center, frames)
            ox, oy, oz = col(oc[:, 0]), col(oc[:, 1]), col(oc[:, 2])
            a = dx * dx + dy * dy
            b = dx * ox + dy * oy
            c = ox * ox + oy * oy - np.float32(r * r)
            disc = b * b - a * c
            t_side = (-b - np.sqrt(disc)) / a
            z_side = oz + t_side * dz
            t_side = np.where((disc > 0) & (np.abs(z_side) <= hh) & (t_side > near), t_side, inf)
            # the cap facing the ray origin (the origin is outside the cylinder)
            cap_z = np.where(oz > 0, np.float32(hh), np.float32(-hh))
            t_cap = (cap_z - oz) / dz
            xc, yc = ox + t_cap * dx, oy + t_cap * dy
            t_cap = np.where((xc * xc + yc * yc <= r * r) & (t_cap > near), t_cap, inf)
            return np.minimum(t_side, t_cap)
        if p.kind == "box":
            oc = O - p.at(p.center, frames)
            yaw = p.at(p.yaw, frames) if p.yaw is not None else np.zeros(len(O), dtype=np.float32)
            cs, sn = np.cos(yaw), np.sin(yaw)
            # origin and directions in the box frame (rotated by -yaw about z)
            o_loc = (cs * oc[:, 0] + sn * oc[:, 1], -sn * oc[:, 0] + cs * oc[:, 1], oc[:, 2])
            d_loc = (col(cs) * dx + col(sn) * dy, col(-sn) * dx + col(cs) * dy, dz)
            tmin = tmax = None
            for h, o, d in zip(p.size, o_loc, d_loc):
                inv = 1.0 / d
                t1 = (np.float32(-h) - col(o)) * inv
                t2 = (np.float32(h) - col(o)) * inv
                lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
                tmin = lo if tmin is None else np.maximum(tmin, lo)
                tmax = hi if tmax is None else np.minimum(tmax, hi)
            return np.where((tmax >= tmin) & (tmin > near), tmin, inf)
        if p.kind == "capsule":
            A, B = p.at(p.a, frames), p.at(p.b, frames)
            r2 = np.float32(p.size[0] ** 2)
            DD = dx * dx + dy * dy + dz * dz
            ba = B - A  # [F, 3]
            oa = O - A
            baba = col((ba * ba).sum(-1))
            bard = dx * col(ba[:, 0]) + dy * col(ba[:, 1]) + dz * col(ba[:, 2])
            baoa = col((ba * oa).sum(-1))
            rdoa = dx * col(oa[:, 0]) + dy * col(oa[:, 1]) + dz * col(oa[:, 2])
            oaoa = col((oa * oa).sum(-1))
            qa = baba * DD - bard * bard
            qb = baba * rdoa - baoa * bard
            qc = baba * oaoa - baoa * baoa - r2 * baba
            disc = qb * qb - qa * qc
            t_body = (-qb - np.sqrt(disc)) / qa
            y = baoa + t_body * bard
            body_ok = (disc > 0) & (y > 0) & (y < baba) & (t_body > near)
            t = np.where(body_ok, t_body, inf)
            for end in (A, B):  # spherical caps
                oc = O - end
                b = dx * col(oc[:, 0]) + dy * col(oc[:, 1]) + dz * col(oc[:, 2])
                c = col((oc * oc).sum(-1)) - r2
                d2 = b * b - DD * c
                ts = (-b - np.sqrt(d2)) / DD
                t = np.minimum(t, np.where((d2 > 0) & (ts > near), ts, inf))
            return t
    raise ValueError(f"unknown primitive kind {p.kind!r}")


def _normal_and_local(p: Primitive, pts: np.ndarray, fidx: np.ndarray, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def _pattern(texture: str, local: np.ndarray, period: float) -> np.ndarray:
    if texture == "stripes":
        return np.floor(local[:, 2] / period).astype(np.int64) % 2 == 1
    if texture == "checker":
        q = np.floor(local / period).astype(np.int64)
        return (q.sum(-1) % 2) == 1
    return np.zeros(len(local), dtype=bool)


# Standard-normal quantiles at 256 evenly spaced probabilities: indexing this table with
# random bytes gives (discretised) Gaussian noise several times faster than
# Generator.standard_normal, which dominated rendering time.
_GAUSS_LUT32 = np.array([NormalDist().inv_cdf((i + 0.5) / 256) for i in range(256)], dtype=np.float32)
_GAUSS_LUT32 /= _GAUSS_LUT32.std()  # unit variance after discretisation


def gaussian_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Approximately standard-normal float32 noise of ``shape``."""
    return _GAUSS_LUT32[rng.integers(0, 256, size=shape, dtype=np.uint8)]


def _aabb(p: Primitive, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


_CORNERS = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=np.float32)


def _screen_rect(p: Primitive, camera: Camera, frames: np.ndarray) -> tuple[int, int, int, int] | None:
    """A pixel rectangle ``(v0, v1, u0, u1)`` holding the primitive in every rendered frame
    (the projected corners of its 3D bounds); ``None`` when it is off screen. Rays outside
    it cannot hit the primitive, so only these are intersected."""
    lo, hi = _aabb(p, frames)
    corners = lo[:, None, :] + _CORNERS[None] * (hi - lo)[:, None, :]  # [F, 8, 3]
    right, down, forward = (a[frames] for a in camera.axes())
    rel = corners - camera.position[frames][:, None, :]
    z = np.einsum("fki,fi->fk", rel, forward)
    H, W = camera.height, camera.width
    if (z < NEAR * 2).any():
        return 0, H, 0, W
    K = camera.intrinsics()
    u = K[0, 0] * np.einsum("fki,fi->fk", rel, right) / z + K[0, 2]
    v = K[1, 1] * np.einsum("fki,fi->fk", rel, down) / z + K[1, 2]
    u0, u1 = max(int(np.floor(u.min())) - 1, 0), min(int(np.ceil(u.max())) + 1, W)
    v0, v1 = max(int(np.floor(v.min())) - 1, 0), min(int(np.ceil(v.max())) + 1, H)
    if u0 >= u1 or v0 >= v1:
        return None
    return v0, v1, u0, u1


def _in_shadow(
    prims: list[Primitive],
    pts: np.ndarray,
    fi: np.ndarray,
    inst: np.ndarray,
    active: np.ndarray,
    L: np.ndarray,
    frames: np.ndarray,
) -> np.ndarray:
    """bool ``[M]``: the ray from ``pts`` (on instance ``inst``) toward the light hits a
    non-plane primitive of another instance. (Objects do not shadow themselves: each part
    is convex and unlit faces are dark anyway; skipping them saves most of the exact tests
    on large objects such as tables.)

    Candidates are culled in the plane perpendicular to the light: a ray can only hit a
    primitive whose projected bounds (over all rendered frames) contain its start point and
    which reaches farther toward the light than the point. Only these get an exact test.
    """
    e1 = np.cross(L, np.array([0.0, 0.0, 1.0], dtype=np.float32))
    if np.linalg.norm(e1) < 1e-6:
        e1 = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(L, e1)
    basis = np.stack([e1, e2, L], axis=1).astype(np.float32)  # [3, 3]
    q = pts @ basis  # [M, 3] (along e1, along e2, toward the light)
    out = np.zeros(len(pts), dtype=bool)
    Lc = tuple(np.full(1, v, dtype=np.float32) for v in L)
    for p in prims:
        if p.kind == "plane":
            continue
        lo, hi = _aabb(p, frames)
        corners = (lo[:, None, :] + _CORNERS[None] * (hi - lo)[:, None, :]) @ basis  # [F, 8, 3]
        fmin, fmax = corners.min(1), corners.max(1)  # per frame
        cmin, cmax = fmin.min(0), fmax.max(0)  # over all frames: a cheap first cut
        cand = active & (q[:, 2] < cmax[2]) & (inst != p.instance)
        cand &= (q[:, 0] >= cmin[0]) & (q[:, 0] <= cmax[0]) & (q[:, 1] >= cmin[1]) & (q[:, 1] <= cmax[1])
        idx = np.nonzero(cand)[0]
        if idx.size == 0:
            continue
        if len(fmin) > 1:  # then each candidate against its own frame's bounds (moving parts)
            f = fi[idx]
            qi = q[idx]
            keep = np.all((qi[:, :2] >= fmin[f, :2]) & (qi[:, :2] <= fmax[f, :2]), axis=1) & (qi[:, 2] < fmax[f, 2])
            idx = idx[keep]
            if idx.size == 0:
                continue
        ones = np.ones(idx.size, dtype=np.float32)
        t = intersect(p, pts[idx], tuple(c * ones for c in Lc), frames[fi[idx]], near=0.0)
        out[idx[np.isfinite(t)]] = True
    return out


def render(
    prims: list[Primitive],
    camera: Camera,
    lighting: Lighting,
    *,
    frames: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    rgb_noise: float = 0.0,
    depth_noise: float = 0.0,
    shadows: bool = True,
) -> RenderOutput:
    """Ray cast ``prims`` from ``camera`` for ``frames`` (all when ``None``).

    ``rgb_noise``: std of Gaussian sensor noise in 8-bit units; ``depth_noise``:
    relative std of depth noise per metre of depth (grows with distance, as in
    structured-light sensors). ``shadows``: hard shadows of the directional light cast by
    every non-plane primitive (one shadow ray per lit pixel).
    """
    frames = np.arange(camera.num_frames) if frames is None else np.asarray(frames)
    O, D = camera.rays(frames)
    F, P = D.shape[:2]
    H, W = camera.height, camera.width
    best = np.full((F, P), np.inf, dtype=np.float32)
    winner = np.full((F, P), -1, dtype=np.int32)
    # planar direction components [F, H, W]: rectangles of them are views, not copies
    comps = tuple(np.ascontiguousarray(D[..., i]).reshape(F, H, W) for i in range(3))
    best4 = best.reshape(F, H, W)  # views: rectangle updates write through
    winner4 = winner.reshape(F, H, W)
    for k, p in enumerate(prims):
        if p.kind == "plane":
            t = intersect(p, O, comps, frames).reshape(F, P)
            closer = t < best
            best[closer] = t[closer]
            winner[closer] = k
            continue
        rect = _screen_rect(p, camera, frames)
        if rect is None:
            continue
        v0, v1, u0, u1 = rect
        t = intersect(p, O, tuple(c[:, v0:v1, u0:u1] for c in comps), frames)
        bv = best4[:, v0:v1, u0:u1]
        closer = t < bv
        bv[closer] = t[closer]
        winner4[:, v0:v1, u0:u1][closer] = k

    rgb = np.zeros((F * P, 3), dtype=np.float32)
    ids = np.zeros(F * P, dtype=np.int32)
    L = np.asarray(lighting.direction, dtype=np.float32)
    tint = np.asarray(lighting.tint, dtype=np.float32)
    flat = winner.ravel()
    order = np.argsort(flat, kind="stable")
    bounds = np.searchsorted(flat[order], np.arange(-1, len(prims) + 1))
    best_flat = best.ravel()
    D_flat = D.reshape(-1, 3)
    # bounds[k + 1] .. bounds[k + 2]: the sorted pixels won by primitive k (bounds[0]: misses)
    hit = order[bounds[1] :]  # pixels with a surface, grouped by primitive
    M = hit.size
    pts_all = np.empty((M, 3), dtype=np.float32)
    n_all = np.empty((M, 3), dtype=np.float32)
    albedo_all = np.empty((M, 3), dtype=np.float32)
    for k, p in enumerate(prims):
        a, b = bounds[k + 1] - bounds[1], bounds[k + 2] - bounds[1]
        if a == b:
            continue
        sel = hit[a:b]
        fi = sel // P
        ids[sel] = p.instance
        pts = O[fi] + best_flat[sel][:, None] * D_flat[sel]
        n, local = _normal_and_local(p, pts, fi, frames)
        pat = _pattern(p.texture, local, p.period)
        pts_all[a:b], n_all[a:b] = pts, n
        albedo_all[a:b] = np.where(pat[:, None], np.asarray(p.color2, np.float32), np.asarray(p.color, np.float32))
    lam = np.maximum(n_all @ L, 0.0)
    if shadows and M:
        shadow = _in_shadow(prims, pts_all + n_all * np.float32(SHADOW_BIAS), hit // P, ids[hit], lam > 0, L, frames)
        lam[shadow] = 0.0
    rgb[hit] = albedo_all * (lighting.ambient + lighting.diffuse * lam)[:, None] * tint
    rgb *= 255.0
    surface = np.isfinite(best)
    depth = np.where(surface, best, 0.0).astype(np.float32)
    if rng is not None and rgb_noise > 0:
        rgb += gaussian_noise(rng, rgb.shape) * np.float32(rgb_noise)
    if rng is not None and depth_noise > 0:
        noise = gaussian_noise(rng, depth.shape) * np.float32(depth_noise)
        depth = np.where(surface, depth * (1 + noise * depth), 0.0).astype(np.float32)
    return RenderOutput(
        rgb=np.clip(rgb, 0, 255).round().astype(np.uint8).reshape(F, H, W, 3),
        depth=depth.reshape(F, H, W),
        ids=ids.reshape(F, H, W),
        t_min=best.reshape(F, H, W),
    )
