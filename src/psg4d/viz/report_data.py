"""What the report's player reads (its ``__DATA_JSON__``): the frames, embedded as base64 images,
depth as a colour ramp, and each object's masks as the scene graph's compressed COCO RLE strings
(decoded by the page's script), all on a subsample of at most ``max_frames`` frames.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from PIL import Image

from psg4d.data.schema import SceneGraph4D, Video4D, rle_decode, rle_encode


def _encode_image(rgb: np.ndarray, fmt: str, quality: int) -> str:
    """``rgb [H, W, 3]`` uint8 -> a ``data:`` URL (PNG or JPEG)."""
    buf = io.BytesIO()
    if fmt == "png":
        Image.fromarray(rgb).save(buf, format="PNG", optimize=True)
        mime = "image/png"
    else:
        Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
        mime = "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def depth_to_rgb(depth: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Depth in metres -> a perceptual blue (near) to yellow (far) ramp; unknown depth (0) black."""
    t = np.clip((depth - lo) / max(hi - lo, 1e-6), 0, 1)
    stops = np.array([[13, 8, 135], [126, 3, 168], [204, 71, 120], [248, 149, 64], [240, 249, 33]], np.float32)
    pos = t * (len(stops) - 1)
    i = np.minimum(pos.astype(int), len(stops) - 2)
    f = (pos - i)[..., None]
    rgb = stops[i] * (1 - f) + stops[i + 1] * f
    rgb[depth <= 0] = 0
    return rgb.astype(np.uint8)


def display_frames(n: int, max_frames: int) -> list[int]:
    """The frames of an ``n``-frame video the player shows: all, or ``max_frames`` spread uniformly."""
    if n <= max_frames:
        return list(range(n))
    return sorted(set(np.round(np.linspace(0, n - 1, max_frames)).astype(int).tolist()))


def display_size(video: Video4D, max_side: int) -> tuple[int, int]:
    """``(height, width)`` of the embedded frames: the video's, its longer side cut to ``max_side``."""
    scale = min(1.0, max_side / max(video.height, video.width))
    return max(1, round(video.height * scale)), max(1, round(video.width * scale))


def image_format_for(image_format: str, size: tuple[int, int]) -> str:
    """``png`` or ``jpeg``; ``auto`` is PNG up to 128x128 pixels, where JPEG artefacts would be
    magnified, else JPEG."""
    dh, dw = size
    if image_format == "auto":
        image_format = "png" if dh * dw <= 128 * 128 else "jpeg"
    if image_format not in ("png", "jpeg"):
        raise ValueError(f"image_format must be png, jpeg or auto, got {image_format!r}")
    return image_format


def encode_frames(video: Video4D, disp: list[int], size: tuple[int, int], image_format: str,
                  jpeg_quality: int) -> tuple[list[str], list[str] | None]:
    """Frames ``disp`` of ``video`` resized to ``size`` as ``data:`` URLs, and its depth the same way
    (None without depth; the colour ramp spans the video's 2nd to 98th depth percentile)."""
    dh, dw = size
    frames = []
    depth_frames = None
    if video.depth is not None:
        valid = video.depth[video.depth > 0]
        lo, hi = (float(np.percentile(valid, 2)), float(np.percentile(valid, 98))) if valid.size else (0.0, 1.0)
        depth_frames = []
    for t in disp:
        rgb = video.rgb[t]
        if (dh, dw) != rgb.shape[:2]:
            rgb = np.asarray(Image.fromarray(rgb).resize((dw, dh), Image.BILINEAR))
        frames.append(_encode_image(rgb, image_format, jpeg_quality))
        if depth_frames is not None:
            d = depth_to_rgb(video.depth[t], lo, hi)
            if (dh, dw) != d.shape[:2]:
                # nearest: blending would invent depths between an object and what is behind it
                d = np.asarray(Image.fromarray(d).resize((dw, dh), Image.NEAREST))
            depth_frames.append(_encode_image(d, image_format, jpeg_quality))
    return frames, depth_frames


def _compressed(rle: dict) -> str:
    """An RLE's compressed ``counts`` string (what the page's decoder reads)."""
    if isinstance(rle["counts"], str):
        return rle["counts"]
    return rle_encode(rle_decode(rle))["counts"]


def object_tubes(pred: SceneGraph4D, disp: list[int], colours: dict[int, tuple[int, int, int]]) -> list[dict[str, Any]]:
    """Per object: id, category, colour and its RLE strings on frames ``disp`` (None: absent)."""
    objects = []
    for o in pred.objects:
        rles = [] if o.tube is None else [
            None if o.tube.rles[t] is None else _compressed(o.tube.rles[t]) for t in disp
        ]
        objects.append({
            "id": o.object_id, "category": o.majority_category(), "colour": list(colours[o.object_id]), "rles": rles,
        })
    return objects
