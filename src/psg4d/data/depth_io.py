"""Per-frame depth maps of a user video (a folder of ``.npy`` metres or 16-bit PNGs).

Values are checked as they are read, because a wrong unit or a broken export
otherwise runs the whole model on nonsense without a word:

* NaN / inf / values <= 0 mean "unknown" (sensors mark missing depth that way)
  and become 0; a frame with *some* negative values is logged once per source.
* A map with no positive finite value at all (all NaN, all negative, all 0)
  carries no depth. :meth:`DepthSource.check_sample` refuses a source whose
  probed maps are all like that before any work starts, and the frame reader
  warns once when a single frame is like that.
* A positive value above :data:`MAX_DEPTH_M` is not metres (1e30, or
  millimetres read as metres beyond 10 km): refused, naming ``--depth-scale``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from psg4d.data.frame_sampling import list_files
from psg4d.errors import DataError

log = logging.getLogger(__name__)

DEPTH_EXTS = (".npy", ".png")
# Farther than any RGB-D sensor or driving-scene depth estimate: beyond it the unit is wrong.
MAX_DEPTH_M = 10_000.0


class DepthSource:
    """A folder of per-frame depth maps (``.npy`` metres or 16-bit PNG ``depth_scale`` units/metre)."""

    def __init__(self, folder: str | Path, *, depth_scale: float = 1000.0):
        self.path = Path(folder)
        if not self.path.exists():
            raise DataError(self.path, "depth folder not found")
        if not self.path.is_dir():
            raise DataError(self.path, "depth must be a folder of .npy or 16-bit .png files")
        if not np.isfinite(depth_scale) or depth_scale <= 0:
            raise DataError(self.path, f"depth_scale must be positive, got {depth_scale}")
        self.depth_scale = float(depth_scale)
        self.files = list_files(self.path, DEPTH_EXTS)
        if not self.files:
            raise DataError(self.path, "no depth maps in folder (looked for .npy and 16-bit .png)")
        kinds = {f.suffix.lower() for f in self.files}
        if len(kinds) > 1:
            raise DataError(self.path, "depth folder mixes .npy and .png files; use one kind")
        self._warned_negative = False
        self._warned_empty = False

    def __len__(self) -> int:
        return len(self.files)

    def check_count(self, num_video_frames: int, video_path: Path) -> None:
        if len(self.files) < num_video_frames:
            raise DataError(
                self.path,
                f"depth folder has {len(self.files)} frames but video {video_path} has {num_video_frames}",
            )
        if len(self.files) > num_video_frames:
            log.warning("%s: %d depth maps for %d video frames; extra ones ignored",
                        self.path, len(self.files), num_video_frames)

    def check_sample(self, num_video_frames: int, hw: tuple[int, int], probes: int = 3) -> None:
        """Read the first, middle and last maps before any work: refuse a source without any
        usable depth or in the wrong unit now rather than after the model ran."""
        n = min(num_video_frames, len(self.files))
        idx = sorted({0, n // 2, n - 1}) if probes >= 3 else [0]
        if all(not (self._raw(i, hw) > 0).any() for i in idx):
            raise DataError(self.path, "depth maps hold no valid depth (all values NaN, inf, zero or negative);"
                                       " check the export, or leave out --depth for RGB-only prediction")

    def _raw(self, index: int, hw: tuple[int, int]) -> np.ndarray:
        """The map as float32 metres, NaN/inf/negative -> 0; raises on absurd magnitudes."""
        if index >= len(self.files):
            raise DataError(self.path,
                            f"depth folder has {len(self.files)} frames but the video has more (frame {index})")
        f = self.files[index]
        if f.suffix.lower() == ".npy":
            try:
                d = np.load(f, allow_pickle=False)
            except (OSError, ValueError, EOFError) as e:
                raise DataError(f, f"cannot read depth map: {e}") from None
            if not (np.issubdtype(d.dtype, np.floating) or np.issubdtype(d.dtype, np.integer)):
                raise DataError(f, f"depth map must be numeric, got dtype {d.dtype}")
            d = d.astype(np.float64)
        else:
            try:
                with Image.open(f) as im:
                    if im.mode not in ("I;16", "I;16B", "I;16L", "I"):
                        raise DataError(f, f"depth PNG must be 16-bit, got mode {im.mode!r}")
                    d = np.asarray(im).astype(np.float64) / self.depth_scale
            except (UnidentifiedImageError, OSError, ValueError) as e:
                raise DataError(f, f"cannot read depth map: {e}") from None
        if d.ndim == 3 and d.shape[-1] == 1:
            d = d[..., 0]
        if d.shape != hw:
            raise DataError(f, f"depth map is {d.shape}, RGB frames are {hw[0]}x{hw[1]}")
        finite = np.isfinite(d)
        if finite.any():
            top = float(d[finite].max())
            if top > MAX_DEPTH_M:
                raise DataError(f, f"depth values up to {top:.3g} m (> {MAX_DEPTH_M:g} m): not metres;"
                                   " .npy must hold metres, 16-bit PNGs --depth-scale units per metre")
        if not self._warned_negative and (d[finite] < 0).any():
            self._warned_negative = True
            log.warning("%s: negative depth values (first in %s) are treated as unknown (0)", self.path, f.name)
        # sensors mark missing depth with NaN/inf in float maps and 0 in PNGs; keep one convention (0 = unknown)
        return np.where(finite & (d > 0), d, 0.0).astype(np.float32)

    def read(self, index: int, hw: tuple[int, int]) -> np.ndarray:
        """Depth of source frame ``index`` in metres, float32 ``[H, W]`` (must match the RGB size)."""
        d = self._raw(index, hw)
        if not self._warned_empty and not (d > 0).any():
            self._warned_empty = True
            log.warning("%s: %s holds no valid depth (all NaN, inf, zero or negative); the frame counts as"
                        " unknown depth", self.path, self.files[index].name)
        return d
