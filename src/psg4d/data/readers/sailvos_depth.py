"""SAIL-VOS 3D depth, as PSG4D-GTA's ``depth/<video>/<t>.npy`` files hold it: read and written.

SAIL-VOS stores ``depth = 6 * (z_ndc + 4e-5)`` (public ``generate_3d_data.py``), where ``z_ndc`` is
the pixel's NDC depth under the frame's GTA projection matrix; ``rage_matrices/<video>/<t>.npz``
holds its inverse ``P_inv`` (row vectors: ``ndc = camera @ P``, the camera looking down -z). The
sky (no surface) is ``z_ndc`` 0, the value ``24e-5``, which reads as depth 0 (psg4d's "no depth").
"""

from __future__ import annotations

import math

import numpy as np

NDC_SCALE, NDC_SHIFT = 6.0, 4e-5  # z_ndc = depth / 6 - 4e-5 (public generate_3d_data.py)
# z_ndc = 0 (a point at infinity): what SAIL-VOS stores where there is no surface; SAIL-VOS readers
# find the sky by this exact float32 value
SKY_DEPTH = np.float32(NDC_SCALE * NDC_SHIFT)

# Near plane of the projection the writer stores (metres). With a reversed-Z infinite projection
# z_ndc = NEAR_PLANE / depth, so the value only scales what is stored; float32 keeps ~1e-7 relative depth.
NEAR_PLANE = 0.15


def ndc_depth_to_metres(depth: np.ndarray, p_inv: np.ndarray) -> np.ndarray:
    """SAIL-VOS depth -> metric camera depth (positive distance along the view axis).

    Pixels map to NDC as in the public code (x: -1..1 left to right, y: 1..-1
    top to bottom); points are row vectors, ``camera = ndc @ P_inv``.
    """
    H, W = depth.shape
    yy, xx = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    x = 2.0 / max(W - 1, 1) * xx - 1.0
    y = -2.0 / max(H - 1, 1) * yy + 1.0
    z = depth / NDC_SCALE - NDC_SHIFT
    ndc = np.stack([x, y, z, np.ones_like(z)], axis=-1).astype(np.float64)
    cam = ndc @ np.asarray(p_inv, dtype=np.float64)
    w = cam[..., 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        zc = np.where(np.abs(w) > 1e-12, cam[..., 2] / w, 0.0)
    # the sky's z_ndc is 0 only up to float32 rounding, which would read as a huge distance
    zc[np.asarray(depth, dtype=np.float32) == SKY_DEPTH] = 0.0
    return np.abs(zc).astype(np.float32)


def ndc_projection(intrinsics: np.ndarray, height: int, width: int, *, near: float = NEAR_PLANE) -> np.ndarray:
    """A GTA-style projection matrix (row vectors: ``clip = camera @ P``, camera looking down -z)
    whose NDC x/y are the pixel grid of :func:`ndc_depth_to_metres` under the pinhole ``intrinsics``,
    and whose ``z_ndc`` is ``near / depth`` (reversed-Z, far plane at infinity: precise in float32)."""
    K = np.asarray(intrinsics, dtype=np.float64)
    sx, sy = 2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)
    # column-vector form; P is its transpose
    m = np.array([
        [sx * K[0, 0], 0.0, 1.0 - sx * K[0, 2], 0.0],
        [0.0, sy * K[1, 1], sy * K[1, 2] - 1.0, 0.0],
        [0.0, 0.0, 0.0, near],
        [0.0, 0.0, -1.0, 0.0],
    ])  # fmt: skip
    return m.T


def metres_to_ndc_depth(depth: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Metric camera depth -> SAIL-VOS depth values under the projection ``p`` (row vectors), the
    exact inverse of :func:`ndc_depth_to_metres` with ``P_inv = inv(p)``. ``p``'s z and w must not
    depend on x and y (true of perspective projections). No depth (0, negative, not finite) -> sky."""
    p = np.asarray(p, dtype=np.float64)
    if np.abs(p[:2, 2:]).max() > 0:
        raise ValueError("projection's z_ndc depends on x or y; metres_to_ndc_depth needs a perspective projection")
    d = np.asarray(depth, dtype=np.float64)
    valid = np.isfinite(d) & (d > 0)
    dv = np.where(valid, d, 1.0)
    z_ndc = (p[3, 2] - p[2, 2] * dv) / (p[3, 3] - p[2, 3] * dv)  # camera point (x, y, -d, 1)
    return np.where(valid, NDC_SCALE * (z_ndc + NDC_SHIFT), SKY_DEPTH).astype(np.float32)


def default_intrinsics(height: int, width: int) -> np.ndarray:
    """A 60-degree pinhole for videos without intrinsics (only x/y of the stored NDC depend on it)."""
    f = 0.5 * width / math.tan(math.radians(30.0))
    return np.array([[f, 0.0, (width - 1) / 2], [0.0, f, (height - 1) / 2], [0.0, 0.0, 1.0]])
