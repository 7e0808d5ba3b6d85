"""The video of the canonical schema: :class:`Video4D`, RGB(-D) frames with their provenance.

RGB frames ``[T, H, W, 3]`` uint8, optional metric depth ``[T, H, W]`` float32,
optional intrinsics ``[3, 3]``, and the source frame number of every frame.
Readers, :mod:`psg4d.data.video_io` and the models all hand videos around in this
form; :mod:`psg4d.data.schema` re-exports it with the scene-graph types.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from psg4d.errors import DataError


@dataclass
class Video4D:
    """An RGB-D (or RGB-only) video.

    ``rgb``: ``[T, H, W, 3]`` uint8. ``depth``: ``[T, H, W]`` float32 metres, or
    ``None`` for RGB-only input. ``intrinsics``: ``[3, 3]`` pinhole matrix or
    ``None``. ``frame_indices``: the original frame number of each of the T
    frames (sampling keeps track of where frames came from). ``depth_baseline``:
    the depth sensor's stereo baseline in metres, or ``None`` (unknown); with the
    focal length it turns depth into the disparity some depth encoders expect
    (:func:`psg4d.model.encoder.disparity_scale_of`).
    """

    rgb: np.ndarray
    depth: np.ndarray | None = None
    intrinsics: np.ndarray | None = None
    fps: float = 5.0
    frame_indices: np.ndarray | None = None
    video_id: str = ""
    depth_baseline: float | None = None

    def __post_init__(self) -> None:
        if self.frame_indices is None:
            self.frame_indices = np.arange(self.rgb.shape[0] if self.rgb.ndim == 4 else 0)

    @property
    def num_frames(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[2])

    @property
    def has_depth(self) -> bool:
        return self.depth is not None

    def validate(self, where: str | Path | None = None) -> "Video4D":
        where = where or self.video_id or "video"
        if self.rgb.ndim != 4 or self.rgb.shape[-1] != 3:
            raise DataError(where, f"rgb must be [T, H, W, 3], got shape {tuple(self.rgb.shape)}", field="rgb")
        if self.rgb.dtype != np.uint8:
            raise DataError(where, f"rgb must be uint8, got {self.rgb.dtype}", field="rgb")
        if self.num_frames == 0:
            raise DataError(where, "video has no frames", field="rgb")
        if self.depth is not None:
            if self.depth.shape != self.rgb.shape[:3]:
                raise DataError(
                    where,
                    f"depth shape {tuple(self.depth.shape)} does not match rgb frames {tuple(self.rgb.shape[:3])}"
                    f" (RGB has {self.num_frames} frames, depth has {self.depth.shape[0] if self.depth.ndim else 0})",
                    field="depth",
                )
            if not np.issubdtype(self.depth.dtype, np.floating):
                raise DataError(where, f"depth must be float metres, got {self.depth.dtype}", field="depth")
        if self.intrinsics is not None and np.asarray(self.intrinsics).shape != (3, 3):
            raise DataError(where, "intrinsics must be a 3x3 matrix", field="intrinsics")
        if self.depth_baseline is not None and not (np.isfinite(self.depth_baseline) and self.depth_baseline > 0):
            raise DataError(where, f"depth_baseline must be positive metres, got {self.depth_baseline}", field="depth_baseline")
        if len(self.frame_indices) != self.num_frames:
            raise DataError(where, "frame_indices length differs from the number of frames", field="frame_indices")
        return self

    def slice(self, start: int, stop: int) -> "Video4D":
        """Frames ``[start, stop)`` as a new Video4D (views, no copy)."""
        return Video4D(
            rgb=self.rgb[start:stop],
            depth=None if self.depth is None else self.depth[start:stop],
            intrinsics=self.intrinsics,
            fps=self.fps,
            frame_indices=self.frame_indices[start:stop],
            video_id=self.video_id,
            depth_baseline=self.depth_baseline,
        )
