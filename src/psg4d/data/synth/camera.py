"""Pinhole camera with per-frame pose (z-up world, OpenCV camera frame).

The camera frame is x right, y down, z forward. Rays are built with a camera-frame
z component of exactly 1, so the ray parameter of a hit *is* its z-depth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, kw_only=True)
class Camera:
    """``position [T, 3]``, ``yaw [T]`` (0 looks along +y, positive turns toward +x),
    ``pitch [T]`` (negative looks down), ``fov_deg`` horizontal field of view."""

    position: np.ndarray
    yaw: np.ndarray
    pitch: np.ndarray
    fov_deg: float
    height: int
    width: int

    @property
    def num_frames(self) -> int:
        return int(self.position.shape[0])

    def intrinsics(self) -> np.ndarray:
        f = (self.width / 2) / math.tan(math.radians(self.fov_deg) / 2)
        return np.array([[f, 0.0, self.width / 2], [0.0, f, self.height / 2], [0.0, 0.0, 1.0]])

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World-frame camera axes ``right, down, forward``, each ``[T, 3]``."""
        cy, sy = np.cos(self.yaw), np.sin(self.yaw)
        cp, sp = np.cos(self.pitch), np.sin(self.pitch)
        forward = np.stack([sy * cp, cy * cp, sp], axis=-1)
        right = np.stack([cy, -sy, np.zeros_like(cy)], axis=-1)
        down = np.cross(forward, right)
        return right, down, forward

    def rays(self, frames: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Origins ``[F, 3]`` and directions ``[F, H*W, 3]`` (float32, not normalised:
        camera-frame z is 1) for ``frames`` (all frames when ``None``)."""
        idx = np.arange(self.num_frames) if frames is None else np.asarray(frames)
        K = self.intrinsics()
        v, u = np.mgrid[0 : self.height, 0 : self.width]
        x = ((u.ravel() + 0.5 - K[0, 2]) / K[0, 0]).astype(np.float32)
        y = ((v.ravel() + 0.5 - K[1, 2]) / K[1, 1]).astype(np.float32)
        R = np.stack(self.axes(), axis=1)[idx].astype(np.float32)  # [F, 3 (right, down, fwd), 3]
        xy1 = np.stack([x, y, np.ones_like(x)], -1)  # [P, 3]
        d = np.matmul(xy1[None], R)  # [F, P, 3]
        return self.position[idx].astype(np.float32), d

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """World points ``[T, ..., 3]`` -> camera-frame ``[T, ..., 3]`` (z = depth)."""
        right, down, forward = self.axes()
        shape = (self.num_frames,) + (1,) * (points.ndim - 2) + (3,)
        rel = points - self.position.reshape(shape)
        return np.stack([(rel * axis.reshape(shape)).sum(-1) for axis in (right, down, forward)], axis=-1)

    def project(self, points: np.ndarray) -> np.ndarray:
        """World points ``[T, ..., 3]`` -> pixel coordinates ``[T, ..., 2]`` (u, v) and depth ``[T, ..., 1]``."""
        pc = self.to_camera(points)
        K = self.intrinsics()
        z = np.maximum(pc[..., 2:3], 1e-6)
        u = K[0, 0] * pc[..., 0:1] / z + K[0, 2]
        v = K[1, 1] * pc[..., 1:2] / z + K[1, 2]
        return np.concatenate([u, v, pc[..., 2:3]], axis=-1)
