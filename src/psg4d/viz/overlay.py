"""Mask-tube overlays on video frames, and their export as GIF or MP4.

Each object gets a fixed colour (:func:`object_colours`, shared with the HTML
report so a tube looks the same everywhere); its mask is alpha-blended over
the frame and outlined in the full colour so that touching objects stay
distinguishable. Masks are stored at the scene graph's resolution and scaled
to the video's with nearest-neighbour sampling, so a prediction made at 64x64
can be shown on the full-resolution video. Exports render one frame at a time.
"""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

from psg4d.data.schema import SceneGraph4D, Video4D, rle_decode
from psg4d.errors import DataError
from psg4d.utils.io import atomic_path

log = logging.getLogger(__name__)

# Tableau 20 reordered so the first ten are the strongest, most separable colours.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
)


def object_colours(graph: SceneGraph4D) -> dict[int, tuple[int, int, int]]:
    """Object id -> RGB, by the object's position in ``graph.objects`` (cycling the palette)."""
    return {o.object_id: PALETTE[i % len(PALETTE)] for i, o in enumerate(graph.objects)}


def hex_colour(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb))


def check_alignment(video: Video4D, graph: SceneGraph4D, where: str = "video") -> None:
    """The video must have one frame per scene-graph frame."""
    if video.num_frames != graph.num_frames:
        raise DataError(
            where,
            f"video has {video.num_frames} frames but the scene graph {graph.video_id!r} has {graph.num_frames}"
            " (sample the video the way the prediction was made: --fps/--max-frames)",
        )


def _scale_mask(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if mask.shape == hw:
        return mask
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((hw[1], hw[0]), Image.NEAREST)) > 127


def _outline(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def overlay_frame(
    rgb: np.ndarray, masks: Sequence[tuple[np.ndarray, tuple[int, int, int]]], *, alpha: float = 0.5
) -> np.ndarray:
    """Blend ``(mask, colour)`` pairs over one ``[H, W, 3]`` frame (later masks on top)."""
    out = rgb.astype(np.float32)
    hw = rgb.shape[:2]
    for mask, colour in masks:
        m = _scale_mask(mask, hw)
        if not m.any():
            continue
        col = np.asarray(colour, dtype=np.float32)
        out[m] = (1 - alpha) * out[m] + alpha * col
        out[_outline(m)] = col
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def iter_overlay_frames(
    video: Video4D, graph: SceneGraph4D, *, alpha: float = 0.5, object_ids: Sequence[int] | None = None
) -> Iterator[np.ndarray]:
    """Overlaid frames one at a time (memory: one frame)."""
    check_alignment(video, graph)
    colours = object_colours(graph)
    objs = [o for o in graph.objects if o.tube is not None and (object_ids is None or o.object_id in object_ids)]
    for t in range(video.num_frames):
        masks = [(rle_decode(o.tube.rles[t]), colours[o.object_id]) for o in objs if o.tube.rles[t] is not None]
        yield overlay_frame(video.rgb[t], masks, alpha=alpha)


def render_overlay_frames(
    video: Video4D, graph: SceneGraph4D, *, alpha: float = 0.5, object_ids: Sequence[int] | None = None
) -> np.ndarray:
    """``[T, H, W, 3]`` uint8 frames with every (or the chosen) object's tube overlaid."""
    out = np.empty_like(video.rgb)
    for t, frame in enumerate(iter_overlay_frames(video, graph, alpha=alpha, object_ids=object_ids)):
        out[t] = frame
    return out


def export_gif(
    path: str | Path, video: Video4D, graph: SceneGraph4D, *, fps: float | None = None, alpha: float = 0.5
) -> Path:
    """Write an animated, looping GIF of the overlay (atomically)."""
    path = Path(path)
    fps = float(fps or video.fps or 5.0)
    frames = [Image.fromarray(f) for f in iter_overlay_frames(video, graph, alpha=alpha)]
    # GIF stores 256 colours per frame; an adaptive palette per frame keeps the tube colours true
    frames = [f.convert("P", palette=Image.ADAPTIVE, colors=256) for f in frames]
    with atomic_path(path, suffix=".gif") as tmp:
        frames[0].save(
            tmp, format="GIF", save_all=True, append_images=frames[1:], duration=max(20, round(1000 / fps)),
            loop=0, disposal=1,
        )
    return path


def export_mp4(
    path: str | Path, video: Video4D, graph: SceneGraph4D, *, fps: float | None = None, alpha: float = 0.5,
    crf: int = 18,
) -> Path:
    """Write an H.264 (mpeg4 where libx264 is missing) MP4 of the overlay (atomically)."""
    import av

    path = Path(path)
    fps = float(fps or video.fps or 5.0)
    rate = Fraction(fps).limit_denominator(1001)
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    # yuv420p needs even sides: pad by one pixel rather than rescale
    h, w = video.height + video.height % 2, video.width + video.width % 2
    with atomic_path(path, suffix=".mp4") as tmp:
        with av.open(str(tmp), "w", format="mp4") as container:
            stream = container.add_stream(codec, rate=rate)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.options = {"crf": str(crf)} if codec == "libx264" else {"qscale": "3"}
            for frame in iter_overlay_frames(video, graph, alpha=alpha):
                if frame.shape[:2] != (h, w):
                    frame = np.pad(frame, ((0, h - frame.shape[0]), (0, w - frame.shape[1]), (0, 0)), mode="edge")
                for pkt in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(pkt)
            for pkt in stream.encode():
                container.mux(pkt)
    log.info("wrote %s (%s, %d frames)", path, codec, video.num_frames)
    return path
