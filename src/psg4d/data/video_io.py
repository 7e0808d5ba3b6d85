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
open). Depth comes from a folder of ``.npy`` files (metres) or 16-bit PNGs
(integer units, ``depth_scale`` units per metre, 1000 = millimetres), one per
*source* frame in the same order. Without depth, ``Video4D.depth`` is ``None``:
depth is never invented here — the model has an RGB-only path.

Sampling: ``fps`` keeps the source frames nearest below each tick of the target
rate (never upsampling), then ``max_frames`` subsamples uniformly. Every
returned frame records its source frame number in ``frame_indices``.
"""

from __future__ import annotations

import collections
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from psg4d.data.schema import Video4D
from psg4d.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
DEPTH_EXTS = (".npy", ".png")
# A folder of frames carries no frame rate; RGB-D sensors (Kinect, RealSense) record at 30.
DEFAULT_FOLDER_FPS = 30.0

Size = int | tuple[int, int] | None


@dataclass(frozen=True, kw_only=True)
class VideoInfo:
    """What a video source is, before decoding any frame."""

    path: Path
    kind: str  # "frames" (a folder of images) or "video" (a video file)
    num_frames: int
    fps: float
    height: int
    width: int


@dataclass(frozen=True, kw_only=True)
class Frame:
    """One decoded frame. ``index``: source frame number; ``position``: index among the
    sampled frames; ``depth``: float32 metres or ``None``."""

    index: int
    position: int
    rgb: np.ndarray
    depth: np.ndarray | None = None


@dataclass(frozen=True, kw_only=True)
class VideoWindow:
    """A window of consecutive sampled frames; ``start`` is the position of its first frame."""

    start: int
    video: Video4D

    @property
    def stop(self) -> int:
        return self.start + self.video.num_frames


# --------------------------------------------------------------------------- listing


def natural_key(name: str) -> list:
    """Sort key that orders embedded numbers numerically (``f2`` < ``f10``)."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", name)]


def list_files(folder: Path, exts: Sequence[str]) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts and not p.name.startswith(".")]
    return sorted(files, key=lambda p: natural_key(p.name))


def _as_path(p: str | Path, what: str) -> Path:
    path = Path(p)
    if not path.exists():
        raise DataError(path, f"{what} not found")
    return path


# --------------------------------------------------------------------------- sampling and resizing


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


# --------------------------------------------------------------------------- RGB sources


def _read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(path, f"cannot read image: {e}") from None


def _probe_folder(path: Path) -> VideoInfo:
    files = list_files(path, IMAGE_EXTS)
    if not files:
        raise DataError(path, f"no frames in folder (looked for {', '.join(IMAGE_EXTS)})")
    size0: tuple[int, int] | None = None
    for f in files:
        # headers only (PIL opens lazily): catches mixed sizes and non-images before decoding anything
        try:
            with Image.open(f) as im:
                wh = im.size
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f, f"cannot read image: {e}") from None
        if size0 is None:
            size0 = wh
        elif wh != size0:
            raise DataError(
                f, f"frame size {wh[0]}x{wh[1]} differs from {size0[0]}x{size0[1]} of {files[0].name} (mixed frame sizes)"
            )
    assert size0 is not None
    return VideoInfo(path=path, kind="frames", num_frames=len(files), fps=DEFAULT_FOLDER_FPS, height=size0[1], width=size0[0])


def _av_open(path: Path):
    import av

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise DataError(path, f"cannot open video: {e}") from None
    if not container.streams.video:
        container.close()
        raise DataError(path, "file has no video stream")
    return container


def _probe_file(path: Path) -> VideoInfo:
    try:
        return _probe_file_av(path)
    except DataError as av_err:
        try:
            return _probe_file_ffmpeg(path)
        except DataError:
            raise av_err from None


def _probe_file_av(path: Path) -> VideoInfo:
    import av

    container = _av_open(path)
    try:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0) or DEFAULT_FOLDER_FPS
        n = int(stream.frames or 0)
        if n <= 0:
            # some containers (mkv, webm) do not store a frame count: count packets, which needs no decoding
            n = sum(1 for p in container.demux(stream) if p.size > 0)
        h, w = int(stream.codec_context.height), int(stream.codec_context.width)
    except av.FFmpegError as e:
        raise DataError(path, f"cannot read video: {e}") from None
    finally:
        container.close()
    if n <= 0 or h <= 0 or w <= 0:
        raise DataError(path, "video has no frames")
    return VideoInfo(path=path, kind="video", num_frames=n, fps=fps, height=h, width=w)


def _probe_file_ffmpeg(path: Path) -> VideoInfo:
    import imageio_ffmpeg

    try:
        n, _secs = imageio_ffmpeg.count_frames_and_secs(str(path))
        gen = imageio_ffmpeg.read_frames(str(path))
        meta = next(gen)
        gen.close()
    except (RuntimeError, OSError, StopIteration) as e:
        raise DataError(path, f"cannot decode video: {e}") from None
    w, h = meta["size"]
    if n <= 0:
        raise DataError(path, "video has no frames")
    return VideoInfo(path=path, kind="video", num_frames=int(n), fps=float(meta.get("fps") or DEFAULT_FOLDER_FPS), height=h, width=w)


def probe_video(rgb: str | Path) -> VideoInfo:
    """Frame count, rate and size of a frame folder or video file (raises :class:`DataError`)."""
    path = _as_path(rgb, "video")
    if path.is_dir():
        return _probe_folder(path)
    if path.suffix.lower() in IMAGE_EXTS:
        raise DataError(path, "a single image is not a video: pass the folder of frames")
    if path.suffix.lower() not in VIDEO_EXTS:
        log.warning("%s: unknown video extension %r, trying to decode anyway", path, path.suffix)
    return _probe_file(path)


def _decode_av(path: Path) -> Iterator[np.ndarray]:
    import av

    container = _av_open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        n = 0
        for frame in container.decode(stream):
            yield frame.to_ndarray(format="rgb24")
            n += 1
    except av.FFmpegError as e:
        raise DataError(path, f"cannot decode video: {e}") from None
    finally:
        container.close()
    if n == 0:
        raise DataError(path, "video has no frames")


def _decode_ffmpeg(path: Path) -> Iterator[np.ndarray]:
    import imageio_ffmpeg

    try:
        gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = next(gen)
    except (RuntimeError, OSError, StopIteration) as e:
        raise DataError(path, f"cannot decode video: {e}") from None
    w, h = meta["size"]
    try:
        for buf in gen:
            yield np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3)
    except (RuntimeError, OSError) as e:
        raise DataError(path, f"cannot decode video: {e}") from None
    finally:
        gen.close()


def _decode_file(path: Path) -> Iterator[np.ndarray]:
    it = _decode_av(path)
    try:
        first = next(it)
    except DataError as av_err:
        log.info("%s: PyAV failed (%s), falling back to imageio-ffmpeg", path, av_err.problem)
        try:
            yield from _decode_ffmpeg(path)
        except DataError:
            raise av_err from None
        return
    yield first
    yield from it


def _iter_source(info: VideoInfo) -> Iterator[tuple[int, Path, np.ndarray]]:
    """(source index, file to blame, RGB) for every source frame, decoded lazily."""
    if info.kind == "frames":
        for i, f in enumerate(list_files(info.path, IMAGE_EXTS)):
            yield i, f, _read_image(f)
    else:
        for i, rgb in enumerate(_decode_file(info.path)):
            yield i, info.path, rgb


# --------------------------------------------------------------------------- depth


class DepthSource:
    """A folder of per-frame depth maps (``.npy`` metres or 16-bit PNG ``depth_scale`` units/metre)."""

    def __init__(self, folder: str | Path, *, depth_scale: float = 1000.0):
        self.path = _as_path(folder, "depth folder")
        if not self.path.is_dir():
            raise DataError(self.path, "depth must be a folder of .npy or 16-bit .png files")
        if depth_scale <= 0:
            raise DataError(self.path, f"depth_scale must be positive, got {depth_scale}")
        self.depth_scale = float(depth_scale)
        self.files = list_files(self.path, DEPTH_EXTS)
        if not self.files:
            raise DataError(self.path, "no depth maps in folder (looked for .npy and 16-bit .png)")
        kinds = {f.suffix.lower() for f in self.files}
        if len(kinds) > 1:
            raise DataError(self.path, "depth folder mixes .npy and .png files; use one kind")

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

    def read(self, index: int, hw: tuple[int, int]) -> np.ndarray:
        """Depth of source frame ``index`` in metres, float32 ``[H, W]`` (must match the RGB size)."""
        if index >= len(self.files):
            raise DataError(self.path, f"depth folder has {len(self.files)} frames but the video has more (frame {index})")
        f = self.files[index]
        if f.suffix.lower() == ".npy":
            try:
                d = np.load(f, allow_pickle=False)
            except (OSError, ValueError, EOFError) as e:
                raise DataError(f, f"cannot read depth map: {e}") from None
            if not (np.issubdtype(d.dtype, np.floating) or np.issubdtype(d.dtype, np.integer)):
                raise DataError(f, f"depth map must be numeric, got dtype {d.dtype}")
            d = d.astype(np.float32)
        else:
            try:
                with Image.open(f) as im:
                    if im.mode not in ("I;16", "I;16B", "I;16L", "I"):
                        raise DataError(f, f"depth PNG must be 16-bit, got mode {im.mode!r}")
                    d = np.asarray(im).astype(np.float32) / self.depth_scale
            except (UnidentifiedImageError, OSError, ValueError) as e:
                raise DataError(f, f"cannot read depth map: {e}") from None
        if d.ndim == 3 and d.shape[-1] == 1:
            d = d[..., 0]
        if d.shape != hw:
            raise DataError(f, f"depth map is {d.shape}, RGB frames are {hw[0]}x{hw[1]}")
        # sensors mark missing depth with NaN/inf in float maps and 0 in PNGs; keep one convention (0 = unknown)
        return np.where(np.isfinite(d), d, 0.0).astype(np.float32)


# --------------------------------------------------------------------------- public API


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
) -> Iterator[Frame]:
    """Decode, sample and resize frames one at a time (memory: one frame).

    ``keep``: explicit source frame numbers (sorted); overrides ``fps``.
    ``source_fps`` overrides the source's rate (a frame folder has none: 30 assumed).
    """
    info = info or probe_video(rgb)
    src_fps = float(source_fps or info.fps)
    dsrc = DepthSource(depth, depth_scale=depth_scale) if depth is not None else None
    if dsrc is not None:
        dsrc.check_count(info.num_frames, info.path)
    hw = target_size(info.height, info.width, size)
    sampler = _FpsSampler(src_fps, fps)
    wanted = None if keep is None else iter(sorted(int(k) for k in keep))
    next_wanted = None if wanted is None else next(wanted, None)
    pos = 0
    for i, where, frame in _iter_source(info):
        if wanted is not None:
            if next_wanted is None:
                break
            if i != next_wanted:
                continue
            next_wanted = next(wanted, None)
        elif not sampler.keep(i):
            continue
        if frame.shape[:2] != (info.height, info.width):
            raise DataError(
                where, f"frame {i} is {frame.shape[1]}x{frame.shape[0]}, expected {info.width}x{info.height} (mixed frame sizes)"
            )
        d = None
        if dsrc is not None:
            if i >= len(dsrc):
                raise DataError(dsrc.path, f"depth folder has {len(dsrc)} frames but video {info.path} has more (at least {i + 1})")
            d = resize_depth(dsrc.read(i, (info.height, info.width)), hw)
        yield Frame(index=i, position=pos, rgb=resize_rgb(frame, hw), depth=d)
        pos += 1
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
    got: list[int] = []
    for fr in iter_frames(rgb, depth=depth, depth_scale=depth_scale, size=size, info=info, keep=keep):
        rgbs[fr.position] = fr.rgb
        if depths is not None:
            depths[fr.position] = fr.depth
        got.append(fr.index)
    if len(got) < len(keep):
        # container headers can overstate the frame count; keep what decoded rather than fail
        log.warning("%s: header promised %d frames, decoded %d", info.path, info.num_frames, got[-1] + 1)
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
