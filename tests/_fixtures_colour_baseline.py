"""Test fixture: a colour-segmentation scene-graph baseline, and the moving-blocks clips it is meant for.

Not part of the package (it was ``psg4d.infer.colour_baseline``): only the tests
(``import _fixtures_colour_baseline``; pytest puts ``tests/`` on ``sys.path``) and
``bench/bench_streaming.py`` (which puts ``tests/`` on ``sys.path`` itself) use it.

:class:`ColourSegmentationPredictor` is a legitimate, training-free window
predictor for scenes whose objects have known, distinct colours (synthetic
worlds, calibration rigs, tests of the streaming machinery): every pixel
within ``tolerance`` of a palette colour belongs to that colour's object, and
relations come from the geometry of the masks in each frame —
``left of`` / ``right of`` / ``above`` / ``below`` when the bounding boxes are
separated along that axis, ``touching`` when they are at most one pixel apart,
and ``in front of`` when depth is given and the mean depths differ by more
than ``depth_margin`` metres. A relation's score is the fraction of the
window's frames (with both objects visible) in which it holds.

It is what :mod:`psg4d.infer.streaming`'s tests and benchmark run, so that
they measure the stitching on real predictions rather than on canned ones.

:func:`moving_blocks` generates such a clip frame by frame (never the whole
video at once): coloured squares on a grey background, one sweeping left and
right, one fixed in the middle, one moving up and down, with metric depth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Mapping

import numpy as np

from psg4d.data.schema import MaskTube, ObjectTrack, Relation, SceneGraph4D, Video4D, spans_from_mask
from psg4d.data.video_io import Frame

DEFAULT_PALETTE: dict[str, tuple[int, int, int]] = {
    "red block": (220, 40, 40),
    "blue block": (40, 60, 220),
    "green block": (40, 200, 60),
}
PREDICATES = ["left of", "right of", "above", "below", "touching", "in front of"]


@dataclass(frozen=True, kw_only=True)
class _Boxes:
    """Per-frame bounding boxes of one mask tube (inclusive pixel bounds; ``present`` False = no box)."""

    present: np.ndarray
    y0: np.ndarray
    y1: np.ndarray
    x0: np.ndarray
    x1: np.ndarray


def _boxes(mask: np.ndarray) -> _Boxes:
    rows = mask.any(axis=2)  # [T, H]
    cols = mask.any(axis=1)  # [T, W]
    H, W = rows.shape[1], cols.shape[1]
    return _Boxes(
        present=rows.any(axis=1),
        y0=rows.argmax(axis=1),
        y1=H - 1 - rows[:, ::-1].argmax(axis=1),
        x0=cols.argmax(axis=1),
        x1=W - 1 - cols[:, ::-1].argmax(axis=1),
    )


def frame_relations(
    a: _Boxes, b: _Boxes, depth_a: np.ndarray | None, depth_b: np.ndarray | None, depth_margin: float
) -> dict[str, np.ndarray]:
    """Predicate -> bool ``[T]``: the frames where it holds for subject ``a`` and object ``b``."""
    both = a.present & b.present
    gap_x = np.maximum(np.maximum(b.x0 - a.x1, a.x0 - b.x1), 0)
    gap_y = np.maximum(np.maximum(b.y0 - a.y1, a.y0 - b.y1), 0)
    out = {
        "left of": a.x1 < b.x0,
        "right of": a.x0 > b.x1,
        "above": a.y1 < b.y0,
        "below": a.y0 > b.y1,
        "touching": (gap_x <= 1) & (gap_y <= 1),
    }
    if depth_a is not None and depth_b is not None:
        with np.errstate(invalid="ignore"):
            out["in front of"] = depth_a + depth_margin < depth_b  # NaN (absent) compares False
    return {p: v & both for p, v in out.items()}


class ColourSegmentationPredictor:
    """Window predictor: palette-colour segmentation + mask-geometry relations (see module doc)."""

    def __init__(
        self,
        *,
        palette: Mapping[str, tuple[int, int, int]] = DEFAULT_PALETTE,
        tolerance: float = 60.0,
        min_area: int = 4,
        depth_margin: float = 0.25,
    ):
        self.palette = dict(palette)
        self.tolerance = float(tolerance)
        self.min_area = int(min_area)
        self.depth_margin = float(depth_margin)

    def segment(self, video: Video4D) -> dict[str, np.ndarray]:
        """Category -> bool ``[T, H, W]`` for every palette colour seen in the window."""
        rgb = video.rgb.astype(np.int16)
        out = {}
        for name, colour in self.palette.items():
            d2 = ((rgb - np.asarray(colour, dtype=np.int16)) ** 2).sum(axis=-1, dtype=np.int32)
            mask = d2 <= self.tolerance**2
            area = mask.reshape(mask.shape[0], -1).sum(axis=1)
            mask[area < self.min_area] = False  # specks are noise, not objects
            if mask.any():
                out[name] = mask
        return out

    def predict(self, video: Video4D) -> SceneGraph4D:
        T, H, W = video.num_frames, video.height, video.width
        masks = self.segment(video)
        names = list(masks)
        objects = [
            ObjectTrack(object_id=i, category=name, tube=MaskTube.from_dense(masks[name]),
                        score=float(masks[name].reshape(T, -1).any(axis=1).mean()))
            for i, name in enumerate(names)
        ]
        boxes = {name: _boxes(masks[name]) for name in names}
        depths: dict[str, np.ndarray | None] = {}
        for name in names:
            if video.depth is None:
                depths[name] = None
            else:
                m = masks[name].reshape(T, -1)
                total = np.where(m, video.depth.reshape(T, -1), 0.0).sum(axis=1)
                with np.errstate(invalid="ignore", divide="ignore"):
                    depths[name] = total / m.sum(axis=1)  # NaN where absent
        relations = []
        for i, a in enumerate(names):
            for j, b in enumerate(names):
                if i == j:
                    continue
                n_both = int((boxes[a].present & boxes[b].present).sum())
                holds = frame_relations(boxes[a], boxes[b], depths[a], depths[b], self.depth_margin)
                for p in PREDICATES:
                    if p in holds:
                        spans = spans_from_mask(holds[p])
                        if spans:
                            relations.append(Relation(i, j, p, spans, score=float(holds[p].sum() / n_both)))
        relations.sort(key=lambda r: (-(r.score or 0.0), r.subject_id, r.object_id, r.predicate))
        return SceneGraph4D(
            video_id=video.video_id, num_frames=T, height=H, width=W, objects=objects, relations=relations,
            object_vocab=list(self.palette), predicate_vocab=list(PREDICATES),
            meta={"predictor": "colour-segmentation baseline"},
        )

    __call__ = predict


def block_positions(t: int, *, size: int, block: int, period: int) -> dict[str, tuple[int, int]]:
    """Top-left ``(y, x)`` of each block at frame ``t`` (triangle-wave motion)."""
    span = size - block
    phase = (t % period) / period
    tri = 2 * phase if phase < 0.5 else 2 - 2 * phase  # 0 -> 1 -> 0
    return {
        "red block": (size // 8, int(round(tri * span))),
        "blue block": (size // 2 - block // 2, size // 2 - block // 2),
        "green block": (int(round(tri * span)), size - block - size // 16),
    }


def moving_blocks(
    num_frames: int, *, size: int = 64, block: int | None = None, period: int = 200, with_depth: bool = True
) -> Iterator[Frame]:
    """Frames of the moving-blocks clip, generated one at a time (see module doc)."""
    block = block or max(4, size // 6)
    bg = np.full((size, size, 3), 90, dtype=np.uint8)
    # the red block is nearest the camera, the green one farthest, the background behind all
    depth_of = {"red block": 1.0, "blue block": 2.0, "green block": 3.0}
    for t in range(num_frames):
        rgb = bg.copy()
        depth = np.full((size, size), 5.0, dtype=np.float32) if with_depth else None
        # drawn far to near so nearer blocks occlude
        for name in ("green block", "blue block", "red block"):
            y, x = block_positions(t, size=size, block=block, period=period)[name]
            rgb[y : y + block, x : x + block] = DEFAULT_PALETTE[name]
            if depth is not None:
                depth[y : y + block, x : x + block] = depth_of[name]
        yield Frame(index=t, position=t, rgb=rgb, depth=depth)
