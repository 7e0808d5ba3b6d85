"""What a video source is and how its raw RGB frames decode: frame folders and video files.

:func:`probe_video` reads headers only (frame count, rate, size) and refuses what
cannot be a video before anything is decoded. :func:`iter_source_frames` then
yields every source frame in order, decoded straight at the size asked: images
of a folder (``png/jpg/jpeg/bmp``, sorted naturally by the numbers in their
names, JPEGs at a reduced DCT scale) are opened only when a frame is wanted; a
video file is decoded with PyAV (its scaler converts and scales in one pass),
imageio-ffmpeg being the fallback for containers PyAV cannot open.

Sampling, depth and the :class:`~psg4d.data.video4d.Video4D` built from the
frames are :mod:`psg4d.data.video_io`, which re-exports the public names here.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from psg4d.data.frame_sampling import list_files, resize_rgb
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


def iter_source_frames(
    info: VideoInfo, hw: tuple[int, int]
) -> Iterator[tuple[int, Path, Callable[[], np.ndarray]]]:
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
