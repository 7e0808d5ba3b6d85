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

Size: frames are scaled while they are decoded (PyAV's scaler converts and
scales in one pass; JPEGs decode at a reduced DCT scale), so a large source
frame never exists in memory at full size. Depth values are checked as they are
read (:mod:`psg4d.data.depth_io`); sampling and size rules live in
:mod:`psg4d.data.frame_sampling`.

Sampling: ``fps`` keeps the source frames nearest below each tick of the target
rate (never upsampling), then ``max_frames`` subsamples uniformly. Every
returned frame records its source frame number in ``frame_indices``.
"""

from __future__ import annotations

import collections
import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from psg4d.data.depth_io import DEPTH_EXTS as DEPTH_EXTS, DepthSource  # re-exported
from psg4d.data.frame_sampling import (  # re-exported: video_io is the public entry point
    Size as Size, _FpsSampler, capped_size as capped_size, effective_fps, list_files as list_files,
    natural_key as natural_key, resize_depth as resize_depth, resize_rgb, scale_intrinsics, select_positions,
    target_size,
)
from psg4d.data.schema import Video4D
from psg4d.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
# A folder of frames carries no frame rate; RGB-D sensors (Kinect, RealSense) record at 30.
DEFAULT_FOLDER_FPS = 30.0


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


# --------------------------------------------------------------------------- listing


def _as_path(p: str | Path, what: str) -> Path:
    path = Path(p)
    if not path.exists():
        raise DataError(path, f"{what} not found")
    return path


# --------------------------------------------------------------------------- RGB sources


def _read_image(path: Path, hw: tuple[int, int] | None = None, native: tuple[int, int] | None = None) -> np.ndarray:
    """RGB of an image file, decoded straight at ``hw`` (H, W) when given: JPEG decodes at a reduced
    DCT scale (``draft``), so a 4000x3000 photo never exists in memory at full size."""
    try:
        with Image.open(path) as im:
            if native is not None and im.size != (native[1], native[0]):
                raise DataError(path, f"frame is {im.size[0]}x{im.size[1]}, expected {native[1]}x{native[0]}"
                                      " (mixed frame sizes)")
            if hw is not None and im.size != (hw[1], hw[0]):
                im.draft("RGB", (hw[1], hw[0]))
                im = im.convert("RGB")
                if im.size != (hw[1], hw[0]):
                    im = im.resize((hw[1], hw[0]), Image.BILINEAR)
                return np.asarray(im)
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


def _decode_av(path: Path, hw: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
    import av

    container = _av_open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        n = 0
        for frame in container.decode(stream):
            if hw is None or (frame.height, frame.width) == hw:
                yield frame.to_ndarray(format="rgb24")
            else:
                # libswscale converts and scales in one pass: no full-size RGB copy of the frame
                yield frame.to_ndarray(width=hw[1], height=hw[0], format="rgb24", interpolation="BILINEAR")
            n += 1
    except av.FFmpegError as e:
        raise DataError(path, f"cannot decode video: {e}") from None
    finally:
        container.close()
    if n == 0:
        raise DataError(path, "video has no frames")


def _decode_ffmpeg(path: Path, hw: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
    import imageio_ffmpeg

    try:
        gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = next(gen)
    except (RuntimeError, OSError, StopIteration) as e:
        raise DataError(path, f"cannot decode video: {e}") from None
    w, h = meta["size"]
    try:
        for buf in gen:
            rgb = np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3)
            yield rgb if hw is None else resize_rgb(rgb, hw)
    except (RuntimeError, OSError) as e:
        raise DataError(path, f"cannot decode video: {e}") from None
    finally:
        gen.close()


def _decode_file(path: Path, hw: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
    it = _decode_av(path, hw)
    try:
        first = next(it)
    except DataError as av_err:
        log.info("%s: PyAV failed (%s), falling back to imageio-ffmpeg", path, av_err.problem)
        try:
            yield from _decode_ffmpeg(path, hw)
        except DataError:
            raise av_err from None
        return
    yield first
    yield from it


def _iter_source(info: VideoInfo, hw: tuple[int, int]) -> Iterator[tuple[int, Path, Callable[[], np.ndarray]]]:
    """(source index, file to blame, RGB at ``hw`` on call) for every source frame: a skipped image
    is never opened; a video file is decoded frame by frame anyway, scaled as it is converted."""
    native = (info.height, info.width)
    if info.kind == "frames":
        for i, f in enumerate(list_files(info.path, IMAGE_EXTS)):
            yield i, f, functools.partial(_read_image, f, hw, native)
        return
    for i, rgb in enumerate(_decode_file(info.path, None if hw == native else hw)):
        yield i, info.path, functools.partial(_identity, rgb)


def _identity(x: np.ndarray) -> np.ndarray:
    return x


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
    for i, where, get_rgb in _iter_source(info, hw):
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
