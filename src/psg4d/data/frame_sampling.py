"""The frame files of a folder in order (``list_files``), which source frames a video read keeps (``fps`` resampling, ``max_frames`` subsampling) and
at what size (``size`` as the shorter side or ``(H, W)``; never-upscaling caps); see
:mod:`psg4d.data.video_io`, which re-exports these."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

Size = int | tuple[int, int] | None


def select_positions(
    num_frames: int, *, source_fps: float, fps: float | None = None, max_frames: int | None = None
) -> np.ndarray:
    """Source frame numbers kept by ``fps`` resampling and then ``max_frames`` uniform subsampling."""
    idx = np.arange(num_frames, dtype=np.int64)
    if fps is not None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if fps < source_fps:
            idx = _fps_indices(num_frames, source_fps, fps)
        else:
            log.info("requested %.3g fps >= source %.3g fps: keeping every frame (no upsampling)", fps, source_fps)
    if max_frames is not None:
        if max_frames <= 0:
            raise ValueError(f"max_frames must be positive, got {max_frames}")
        if len(idx) > max_frames:
            pick = np.round(np.linspace(0, len(idx) - 1, max_frames)).astype(np.int64)
            idx = idx[pick]
    return idx


def _fps_indices(num_frames: int, source_fps: float, fps: float) -> np.ndarray:
    step = source_fps / fps
    n = int(math.floor((num_frames - 1) / step + 1e-9)) + 1
    return np.floor(np.arange(n) * step + 1e-9).astype(np.int64)


class _FpsSampler:
    """Streaming version of :func:`_fps_indices`: decides frame by frame, count unknown."""

    def __init__(self, source_fps: float, fps: float | None):
        self.step = source_fps / fps if fps is not None and fps < source_fps else 1.0
        self.k = 0

    def keep(self, index: int) -> bool:
        if index == int(math.floor(self.k * self.step + 1e-9)):
            self.k += 1
            return True
        return False


def effective_fps(indices: np.ndarray, source_fps: float) -> float:
    """The average rate of the kept frames."""
    if len(indices) < 2:
        return float(source_fps)
    return float(source_fps * (len(indices) - 1) / (indices[-1] - indices[0]))


def target_size(height: int, width: int, size: Size) -> tuple[int, int]:
    """``(H, W)`` after resizing: ``size`` is the shorter side (aspect kept) or ``(H, W)``."""
    if size is None:
        return height, width
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        scale = size / min(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))
    h, w = (int(s) for s in size)
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {size}")
    return h, w


def capped_size(height: int, width: int, short_side: int) -> int | None:
    """``size`` that brings the shorter side down to ``short_side`` and never up (None: keep)."""
    if short_side <= 0:
        raise ValueError(f"short_side must be positive, got {short_side}")
    return short_side if min(height, width) > short_side else None


def resize_rgb(rgb: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if rgb.shape[:2] == hw:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((hw[1], hw[0]), Image.BILINEAR))


def resize_depth(depth: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    # nearest: interpolating across an object boundary would invent depths that lie on neither surface
    if depth.shape[:2] == hw:
        return depth
    return np.asarray(Image.fromarray(depth.astype(np.float32), mode="F").resize((hw[1], hw[0]), Image.NEAREST))


def scale_intrinsics(k: np.ndarray | None, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> np.ndarray | None:
    if k is None:
        return None
    k = np.asarray(k, dtype=np.float64).copy()
    sy, sx = dst_hw[0] / src_hw[0], dst_hw[1] / src_hw[1]
    k[0] *= sx
    k[1] *= sy
    return k


def natural_key(name: str) -> list:
    """Sort key that orders embedded numbers numerically (``f2`` < ``f10``)."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", name)]


def list_files(folder: Path, exts: Sequence[str]) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts and not p.name.startswith(".")]
    return sorted(files, key=lambda p: natural_key(p.name))
