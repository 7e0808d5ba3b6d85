"""Reading user videos (frame folders or video files, optional depth) into :class:`Video4D`.

Two ways in:

* :func:`load_video` reads the (sampled, resized) frames of a whole video into
  one :class:`Video4D` — what ``psg4d predict`` and ``psg4d viz`` use.
* :func:`iter_frames` / :func:`iter_video_windows` decode one frame at a time,
  so a video of any length can be processed with memory bounded by one window
  (what :mod:`psg4d.infer.streaming` consumes).

RGB comes from a folder of images (``png/jpg/jpeg/bmp``, sorted naturally by the
numbers in their names, so ``frame_2`` precedes ``frame_10``) or a video file
(decoded with PyAV; imageio-ffmpeg is the fallback for containers PyAV cannot
open); probing and decoding a source live in :mod:`psg4d.data.video_sources`.
Depth comes from a folder of ``.npy`` files (metres) or 16-bit PNGs
(integer units, ``depth_scale`` units per metre, 1000 = millimetres), one per
*source* frame in the same order. Without depth, ``Video4D.depth`` is ``None``:
depth is never invented here — the model has an RGB-only path.

Size: frames are scaled while they are decoded (PyAV's scaler converts and
scales in one pass; JPEGs decode at a reduced DCT scale), so a large source
frame never exists in memory at full size. Depth values are checked as they are
read (:mod:`psg4d.data.depth_io`); sampling and size rules live in
:mod:`psg4d.data.frame_sampling`.

Sampling: ``fps`` keeps the source frames nearest below each tick of the target
rate (never upsampling), then ``max_frames`` subsamples uniformly. Every
returned frame records its source frame number in ``frame_indices``.

This module is the public entry point of video input: it re-exports the names of
:mod:`psg4d.data.video_sources`, :mod:`psg4d.data.frame_sampling` and
:mod:`psg4d.data.depth_io` that callers use.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from psg4d.data.depth_io import DEPTH_EXTS as DEPTH_EXTS, DepthSource  # re-exported
from psg4d.data.frame_sampling import (  # re-exported: video_io is the public entry point
    Size as Size, _FpsSampler, capped_size as capped_size, effective_fps, list_files as list_files,
    natural_key as natural_key, resize_depth as resize_depth, resize_rgb as resize_rgb, scale_intrinsics,
    select_positions, target_size,
)
from psg4d.data.video4d import Video4D
from psg4d.data.video_sources import (  # re-exported: video_io is the public entry point
    DEFAULT_FOLDER_FPS as DEFAULT_FOLDER_FPS, IMAGE_EXTS as IMAGE_EXTS, VIDEO_EXTS as VIDEO_EXTS, VideoInfo,
    iter_source_frames, probe_video,
)
from psg4d.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Frame:
    """One decoded frame. ``index``: source frame number; ``position``: index among the
    sampled frames; ``depth``: float32 metres or ``None``."""

    index: int
    position: int
    rgb: np.ndarray
    depth: np.ndarray | None = None


@dataclass(kw_only=True)
class DecodeTally:
    """Filled by :func:`iter_frames`: the source frames it went through (all that decode when it
    read to the end; a container header may promise more)."""

    frames: int = 0


@dataclass(frozen=True, kw_only=True)
class VideoWindow:
    """A window of consecutive sampled frames; ``start`` is the position of its first frame."""

    start: int
    video: Video4D

    @property
    def stop(self) -> int:
        return self.start + self.video.num_frames


# --------------------------------------------------------------------------- public API


def check_decoded_count(info: VideoInfo, decoded: int) -> None:
    """A file whose frames end well before its header's count is truncated or damaged: refused
    (DataError naming it), never read as a shorter video. A shortfall of a few frames (at most 2,
    or 2 % of the count) is what badly muxed but whole files show; it is tolerated."""
    missing = info.num_frames - decoded
    if missing > max(2, info.num_frames // 50):
        raise DataError(info.path, f"the header promises {info.num_frames} frames but only {decoded} decode"
                                   " (a truncated or damaged file); re-encode it, e.g. `ffmpeg -i IN -c:v libx264"
                                   " OUT.mp4`, to use the frames that decode")


def iter_frames(
    rgb: str | Path,
    *,
    depth: str | Path | None = None,
    depth_scale: float = 1000.0,
    fps: float | None = None,
    size: Size = None,
    source_fps: float | None = None,
    info: VideoInfo | None = None,
    keep: Iterable[int] | None = None,
    tally: DecodeTally | None = None,
) -> Iterator[Frame]:
    """Decode, sample and resize frames one at a time (memory: one frame).

    ``keep``: explicit source frame numbers (sorted); overrides ``fps``.
    ``source_fps`` overrides the source's rate (a frame folder has none: 30 assumed).
    ``tally``: filled with the count of source frames gone through.
    """
    info = info or probe_video(rgb)
    src_fps = float(source_fps or info.fps)
    dsrc = DepthSource(depth, depth_scale=depth_scale) if depth is not None else None
    if dsrc is not None:
        dsrc.check_count(info.num_frames, info.path)
        dsrc.check_sample(info.num_frames, (info.height, info.width))
    hw = target_size(info.height, info.width, size)
    sampler = _FpsSampler(src_fps, fps)
    wanted = None if keep is None else iter(sorted(int(k) for k in keep))
    next_wanted = None if wanted is None else next(wanted, None)
    pos = 0
    tally = tally if tally is not None else DecodeTally()
    for i, where, get_rgb in iter_source_frames(info, hw):
        tally.frames = i + 1
        if wanted is not None:
            if next_wanted is None:
                break
            if i != next_wanted:
                continue
            next_wanted = next(wanted, None)
        elif not sampler.keep(i):
            continue
        frame = get_rgb()
        d = None
        if dsrc is not None:
            if i >= len(dsrc):
                raise DataError(dsrc.path, f"depth folder has {len(dsrc)} frames but video {info.path} has more (at least {i + 1})")
            d = resize_depth(dsrc.read(i, (info.height, info.width)), hw)
        yield Frame(index=i, position=pos, rgb=frame, depth=d)
        pos += 1
    else:
        if keep is None and tally.frames < info.num_frames:
            # a whole-video read keeps every frame that decodes; say so once (load_video passes
            # ``keep`` and says it itself)
            check_decoded_count(info, tally.frames)
            log.warning("%s: the header promised %d frames but %d decode; read those %d", info.path,
                        info.num_frames, tally.frames, tally.frames)
    if pos == 0:
        raise DataError(info.path, "video has no frames")


def load_video(
    rgb: str | Path,
    *,
    depth: str | Path | None = None,
    depth_scale: float = 1000.0,
    fps: float | None = None,
    max_frames: int | None = None,
    size: Size = None,
    source_fps: float | None = None,
    frame_indices: Sequence[int] | None = None,
    intrinsics: np.ndarray | None = None,
    video_id: str | None = None,
) -> Video4D:
    """Read a frame folder or video file (plus optional depth folder) into a :class:`Video4D`.

    ``fps`` resamples from the source rate by picking frames, then ``max_frames``
    subsamples uniformly; ``frame_indices`` instead names the source frames to keep.
    ``size``: shorter side (aspect kept) or ``(H, W)``; depth is resized nearest.
    ``intrinsics`` (of the source resolution) are rescaled with the frames.
    """
    info = probe_video(rgb)
    src_fps = float(source_fps or info.fps)
    dsrc = DepthSource(depth, depth_scale=depth_scale) if depth is not None else None
    if dsrc is not None:
        dsrc.check_count(info.num_frames, info.path)
    if frame_indices is not None:
        keep = np.asarray(sorted(set(int(i) for i in frame_indices)), dtype=np.int64)
        if len(keep) == 0 or keep[0] < 0 or keep[-1] >= info.num_frames:
            raise DataError(info.path, f"frame_indices must lie in [0, {info.num_frames - 1}]")
    else:
        keep = select_positions(info.num_frames, source_fps=src_fps, fps=fps, max_frames=max_frames)
    hw = target_size(info.height, info.width, size)
    rgbs = np.empty((len(keep), hw[0], hw[1], 3), dtype=np.uint8)
    depths = np.empty((len(keep), hw[0], hw[1]), dtype=np.float32) if dsrc is not None else None
    tally = DecodeTally()
    got = _read_into(rgbs, depths, iter_frames(rgb, depth=depth, depth_scale=depth_scale, size=size, info=info,
                                               keep=keep, tally=tally))
    if len(got) < len(keep):
        # The header over-promised (a truncated or badly muxed file): frames chosen from its count
        # mostly lie past the end. Choose again over the frames that do decode (tally.frames: the
        # source ended, so every one of them was gone through) and read those.
        check_decoded_count(info, tally.frames)
        again = keep if frame_indices is not None else select_positions(
            tally.frames, source_fps=src_fps, fps=fps, max_frames=max_frames)
        log.warning("%s: the header promised %d frames but %d decode; %s", info.path, info.num_frames,
                    tally.frames, "kept the asked frames that exist" if frame_indices is not None
                    else f"sampled {len(again)} frames over those {tally.frames}")
        if frame_indices is None and not np.array_equal(again, got):
            rgbs, depths = rgbs[: len(again)], None if depths is None else depths[: len(again)]
            got = _read_into(rgbs, depths, iter_frames(rgb, depth=depth, depth_scale=depth_scale, size=size,
                                                       info=info, keep=again))
        rgbs = rgbs[: len(got)]
        depths = None if depths is None else depths[: len(got)]
    idx = np.asarray(got, dtype=np.int64)
    return Video4D(
        rgb=rgbs,
        depth=depths,
        intrinsics=scale_intrinsics(intrinsics, (info.height, info.width), hw),
        fps=effective_fps(idx, src_fps),
        frame_indices=idx,
        video_id=video_id if video_id is not None else info.path.stem,
    ).validate(info.path)


def _read_into(rgbs: np.ndarray, depths: np.ndarray | None, frames: Iterable[Frame]) -> list[int]:
    """Fill ``rgbs`` / ``depths`` at each frame's position; the source frame numbers read."""
    got: list[int] = []
    for fr in frames:
        rgbs[fr.position] = fr.rgb
        if depths is not None:
            depths[fr.position] = fr.depth
        got.append(fr.index)
    return got


def windows_from_frames(
    frames: Iterable[Frame], *, window: int, stride: int, fps: float = 5.0, video_id: str = ""
) -> Iterator[VideoWindow]:
    """Overlapping windows of ``window`` frames every ``stride`` frames, from a frame stream.

    Holds at most ``window`` frames. The last frames are always covered: if the
    stream ends between two strides, a final window ending at the last frame is
    emitted (it overlaps its predecessor by more than usual). A stream shorter
    than ``window`` gives one short window.
    """
    if window <= 0 or stride <= 0:
        raise ValueError(f"window and stride must be positive, got window={window}, stride={stride}")
    buf: collections.deque[Frame] = collections.deque(maxlen=window)
    next_start = 0
    emitted_stop = 0
    seen = 0
    for fr in frames:
        buf.append(fr)
        seen += 1
        if seen == next_start + window:
            yield _make_window(buf, seen - len(buf), fps, video_id)
            emitted_stop = seen
            next_start += stride
    if seen > emitted_stop:
        yield _make_window(buf, seen - len(buf), fps, video_id)


def _make_window(buf: Sequence[Frame], start: int, fps: float, video_id: str) -> VideoWindow:
    has_depth = buf[0].depth is not None
    return VideoWindow(
        start=start,
        video=Video4D(
            rgb=np.stack([f.rgb for f in buf]),
            depth=np.stack([f.depth for f in buf]) if has_depth else None,
            fps=fps,
            frame_indices=np.asarray([f.index for f in buf], dtype=np.int64),
            video_id=video_id,
        ),
    )


def iter_video_windows(
    rgb: str | Path,
    *,
    window: int,
    stride: int,
    depth: str | Path | None = None,
    depth_scale: float = 1000.0,
    fps: float | None = None,
    size: Size = None,
    source_fps: float | None = None,
) -> Iterator[VideoWindow]:
    """Overlapping windows of a video file or frame folder, decoded lazily (memory: one window)."""
    info = probe_video(rgb)
    src_fps = float(source_fps or info.fps)
    out_fps = min(fps, src_fps) if fps is not None else src_fps
    frames = iter_frames(rgb, depth=depth, depth_scale=depth_scale, fps=fps, size=size, source_fps=src_fps, info=info)
    yield from windows_from_frames(frames, window=window, stride=stride, fps=out_fps, video_id=info.path.stem)
