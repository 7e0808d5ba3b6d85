"""Vectorised ray casting of primitives in numpy: RGB, z-depth and a panoptic id map.

Every primitive is intersected with all rays of all rendered frames at once
(arrays ``[F, H*W]``); the nearest hit wins each pixel, so occlusion is exact.
Shading (Lambert + ambient, procedural textures, hard shadows) is then computed
once per pixel, grouped by the winning primitive, and sensor noise added. The
exact ray geometry of each primitive kind (hits, normals, bounds) is
:mod:`psg4d.data.synth.raycast`.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from psg4d.data.synth.camera import Camera
# Primitive and intersect are also re-exported: render is the entry point the scene builders and tests import
from psg4d.data.synth.raycast import NEAR, Primitive, aabb, intersect, normal_and_local

SHADOW_BIAS = 1e-3  # metres; shadow rays start this far off the surface so it does not shadow itself


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


_CORNERS = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=np.float32)


def _screen_rect(p: Primitive, camera: Camera, frames: np.ndarray) -> tuple[int, int, int, int] | None:
    """A pixel rectangle ``(v0, v1, u0, u1)`` holding the primitive in every rendered frame
    (the projected corners of its 3D bounds); ``None`` when it is off screen. Rays outside
    it cannot hit the primitive, so only these are intersected."""
    lo, hi = aabb(p, frames)
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
        lo, hi = aabb(p, frames)
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


def _nearest_hits(
    prims: list[Primitive], camera: Camera, O: np.ndarray, D: np.ndarray, frames: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, the nearest hit over all primitives: ray parameter ``best [F, P]`` float32
    (inf where nothing is hit) and the winning primitive's index ``winner [F, P]`` int32 (-1)."""
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
    return best, winner


def _shade(
    prims: list[Primitive],
    lighting: Lighting,
    O: np.ndarray,
    D: np.ndarray,
    frames: np.ndarray,
    best: np.ndarray,
    winner: np.ndarray,
    shadows: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Colour and instance id of every pixel from its nearest hit: ``rgb [F*P, 3]`` float32 in
    0..255 (black where nothing is hit) and ``ids [F*P]`` int32 (0 where nothing is hit).
    Normals, textures and shadow rays are computed once per hit pixel, grouped by primitive."""
    F, P = D.shape[:2]
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
        n, local = normal_and_local(p, pts, fi, frames)
        pat = _pattern(p.texture, local, p.period)
        pts_all[a:b], n_all[a:b] = pts, n
        albedo_all[a:b] = np.where(pat[:, None], np.asarray(p.color2, np.float32), np.asarray(p.color, np.float32))
    lam = np.maximum(n_all @ L, 0.0)
    if shadows and M:
        shadow = _in_shadow(prims, pts_all + n_all * np.float32(SHADOW_BIAS), hit // P, ids[hit], lam > 0, L, frames)
        lam[shadow] = 0.0
    rgb[hit] = albedo_all * (lighting.ambient + lighting.diffuse * lam)[:, None] * tint
    rgb *= 255.0
    return rgb, ids


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
    F = D.shape[0]
    H, W = camera.height, camera.width
    best, winner = _nearest_hits(prims, camera, O, D, frames)
    rgb, ids = _shade(prims, lighting, O, D, frames, best, winner, shadows)
    surface = np.isfinite(best)
    depth = np.where(surface, best, 0.0).astype(np.float32)
    # RGB noise is drawn before depth noise: the order fixes what a seed renders
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
