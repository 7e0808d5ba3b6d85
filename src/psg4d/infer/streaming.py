"""Scene graphs of arbitrarily long videos with bounded memory.

A window predictor (``psg4d.infer.predictor.Predictor(model).predict`` or any
``Callable[[Video4D], SceneGraph4D]``) sees overlapping windows of ``window``
frames every ``stride`` frames. :class:`StreamingPredictor` stitches the
window graphs into one video-level graph:

* **Identities.** Each window's objects are matched to the running tracks by
  category and mask IoU over the frames the window shares with what came
  before (volumetric IoU: intersections and unions summed over those frames),
  one-to-one with the Hungarian algorithm; a pair is linked only if its IoU
  reaches ``iou_threshold``. An object still unmatched may be a track coming
  back: tracks of its category unseen in the overlap for at most
  ``reentry_windows`` windows are matched to it (Hungarian again) on the mean
  of their appearance similarity (colour histograms under the masks, histogram
  intersection) and how close the track's last mask and the object's first are
  (centres, in units of half the frame's diagonal), linked at
  ``reentry_threshold``. Other objects start new tracks; each object records
  its first and last frame (``attributes``).
* **Masks.** The frames shared by two windows take the later window's masks
  from the middle of the overlap on (each frame is owned by the window where
  it sits further from the border, so it was predicted with more context).
  Masks exist only as COCO RLE, are appended to per-track files on disk as soon
  as a frame is final, and the output JSON is assembled from those files at
  the end by streaming. No dense ``[T, H, W]`` array of the video is ever
  built: memory is one window plus the tracks' RLEs of the open overlap.
* **Relations.** ``<subject track, predicate, object track>`` from every
  window are pooled; their spans (moved to video frame positions) are merged
  with :func:`merge_spans`, so a relation crossing a window border comes out
  as one span. The score is the **maximum** over windows: a relation seen
  confidently in one window is evidence regardless of how many windows it is
  absent from, and averaging would rank relations of long videos lower just
  because they are short relative to the video. ``max_relations`` caps the
  video's ranked list after stitching (the best by score; each window's own
  cap loses none of them: a relation of the video's top K is in its best
  window's top K). Every object is kept: the objects are the video's panoptic
  segmentation, scored on their own, not only through relations.
* **Depth.** ``meta["depth_source"]`` is the windows' common one (``sensor``,
  ``estimated`` or ``none``); windows that disagree give ``mixed`` and
  ``meta["depth_source_windows"]`` (each source -> the first frames of its windows).

The output file is one scene-graph JSON object on one line (so it is valid as
``.json`` and as a one-line ``.jsonl``); it carries the source frame numbers
in ``meta["frame_indices"]`` and the stitching settings in
``meta["streaming"]``. It is written atomically; on any error nothing is left.

This module runs the windows and the output file's life; the stitching is
:class:`~psg4d.infer.stitching.StitchState`, the JSON assembly
:func:`~psg4d.infer.stream_writer.write_stitched_graph`.
"""

from __future__ import annotations

import itertools
import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from tqdm import tqdm

from psg4d.data.schema import SceneGraph4D, Video4D
from psg4d.data.video_io import Frame, VideoWindow, windows_from_frames
from psg4d.errors import ConfigError, DataError
from psg4d.infer.stitching import StitchState
from psg4d.infer.stream_writer import write_stitched_graph
from psg4d.utils.io import atomic_path

log = logging.getLogger(__name__)

# How long a track is remembered after it was last seen, in windows, and how alike (appearance and
# place, each in [0, 1], averaged) a new object must be to take it back.
REENTRY_WINDOWS = 8
REENTRY_THRESHOLD = 0.75

WindowPredictor = Callable[[Video4D], SceneGraph4D]


@dataclass(frozen=True, kw_only=True)
class StreamSummary:
    """What :meth:`StreamingPredictor.run` wrote."""

    out_path: Path
    video_id: str
    num_frames: int
    num_windows: int
    num_objects: int
    num_relations: int  # written (at most max_relations)
    seconds: float

    @property
    def frames_per_second(self) -> float:
        return self.num_frames / self.seconds if self.seconds > 0 else math.inf

    def load(self) -> SceneGraph4D:
        """The written scene graph (dense in RLE only; fine for short videos, heavy for very long ones)."""
        return SceneGraph4D.load(self.out_path)


class StreamingPredictor:
    """Runs a window predictor over a long video in overlapping windows; see the module doc."""

    def __init__(
        self,
        *,
        predict_window: WindowPredictor,
        window: int,
        stride: int,
        iou_threshold: float = 0.5,
        max_relations: int | None = None,
        progress: bool = True,
        reentry_windows: int = REENTRY_WINDOWS,
        reentry_threshold: float = REENTRY_THRESHOLD,
    ):
        if window < 2:
            raise ConfigError(f"streaming window must be at least 2 frames, got {window}")
        if not 1 <= stride < window:
            # without shared frames there is nothing to match identities on
            raise ConfigError(f"streaming stride must be in [1, window-1] = [1, {window - 1}], got {stride}")
        if not 0.0 < iou_threshold <= 1.0:
            raise ConfigError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if max_relations is not None and max_relations < 1:
            raise ConfigError(f"max_relations must be at least 1, got {max_relations}")
        if reentry_windows < 0 or not 0.0 < reentry_threshold <= 1.0:
            raise ConfigError(f"reentry_windows must be >= 0 and reentry_threshold in (0, 1], got "
                              f"{reentry_windows} and {reentry_threshold}")
        self.predict_window = predict_window
        self.window = window
        self.stride = stride
        self.iou_threshold = iou_threshold
        self.max_relations = max_relations
        self.progress = progress
        self.reentry_frames = reentry_windows * window
        self.reentry_threshold = reentry_threshold

    # ------------------------------------------------------------------ input

    def _windows(self, frames: Iterable, fps: float, video_id: str) -> Iterator[VideoWindow]:
        """``frames`` (what :meth:`run` accepts) as the windows to predict on."""
        it = iter(frames)
        first = next(it, None)
        if first is None:
            return
        items = itertools.chain([first], it)
        if isinstance(first, VideoWindow):
            yield from items
        elif isinstance(first, Frame):
            yield from windows_from_frames(items, window=self.window, stride=self.stride, fps=fps, video_id=video_id)
        elif isinstance(first, Video4D):
            yield from windows_from_frames(
                _chunks_to_frames(items), window=self.window, stride=self.stride, fps=fps, video_id=video_id
            )
        else:
            raise TypeError(f"expected Frame, VideoWindow or Video4D items, got {type(first).__name__}")

    # ------------------------------------------------------------------ main loop

    def run(
        self,
        frames: Iterable[Frame] | Iterable[VideoWindow] | Iterable[Video4D],
        *,
        out_path: str | Path,
        video_id: str = "",
        fps: float = 5.0,
        total_frames: int | None = None,
        meta: dict | None = None,
    ) -> StreamSummary:
        """Predict, stitch and write the video's scene graph to ``out_path`` (atomically).

        ``frames``: single frames (e.g. :func:`psg4d.data.video_io.iter_frames`),
        consecutive :class:`Video4D` chunks, or ready :class:`VideoWindow` s
        (e.g. :func:`psg4d.data.video_io.iter_video_windows`). ``total_frames``
        only sizes the progress bar. ``meta``: more entries of the output's ``meta``
        (e.g. how the frames were sampled, so a viewer can read them again).
        """
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.", dir=out_path.parent))
        t0 = time.perf_counter()
        try:
            state = StitchState(work=work, iou_threshold=self.iou_threshold, reentry_frames=self.reentry_frames,
                                reentry_threshold=self.reentry_threshold)
            notes = self._predict_and_stitch(frames, state, fps=fps, video_id=video_id, total_frames=total_frames)
            if state.num_windows == 0:
                raise DataError(video_id or "video", "no frames to predict on")
            state.finish()
            meta = {**(meta or {}), "fps": fps, **self._output_meta(state, notes, video_id)}
            with atomic_path(out_path) as tmp:
                written = write_stitched_graph(state, tmp, video_id=video_id, meta=meta,
                                               max_relations=self.max_relations)
            return StreamSummary(
                out_path=out_path,
                video_id=video_id,
                num_frames=state.committed,
                num_windows=state.num_windows,
                num_objects=len(state.tracks),
                num_relations=written,
                seconds=time.perf_counter() - t0,
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _predict_and_stitch(self, frames: Iterable, state: StitchState, *, fps: float, video_id: str,
                            total_frames: int | None) -> _WindowNotes:
        """Predict every window and stitch it into ``state``; what the windows' ``meta`` said."""
        total_windows = (
            None if total_frames is None else max(1, math.ceil(max(0, total_frames - self.window) / self.stride) + 1)
        )
        bar = tqdm(
            self._windows(frames, fps, video_id), total=total_windows, unit="win",
            desc=f"streaming {video_id}".strip(), disable=not self.progress,
        )
        notes = _WindowNotes()
        for win in bar:
            graph = self.predict_window(win.video)
            notes.add(int(win.video.frame_indices[0]), graph.meta)
            state.add_window(win, graph)
        return notes

    def _output_meta(self, state: StitchState, notes: _WindowNotes, video_id: str) -> dict:
        """The output's ``meta`` entries about the run: the stitching settings, the depth source, the
        model where the windows named it and, for chained inference, each window's turns."""
        chain = notes.chain
        return {
            "streaming": {
                "window": self.window,
                "stride": self.stride,
                "iou_threshold": self.iou_threshold,
                "reentry_frames": self.reentry_frames,
                "reentry_threshold": self.reentry_threshold,
                "num_windows": state.num_windows,
                "relation_score": "max over windows",
                "max_relations": self.max_relations,
                "relations_stitched": len(state.relations),
            },
            **_depth_meta(notes.depth_sources, video_id),
            **({"model": notes.model} if notes.model is not None else {}),
            **({"mode": "chain", "chain": {"windows": chain, "problems": sum(w["problems"] for w in chain)}}
               if chain else {}),
        }


@dataclass
class _WindowNotes:
    """What the windows' own ``meta`` said that the video's output keeps."""

    # chained inference: each window's turns, so its reasoning stays readable
    chain: list[dict] = field(default_factory=list)
    # depth source -> first frames of the windows that used it
    depth_sources: dict[str, list[int]] = field(default_factory=dict)
    # which model family's predictor wrote the windows, where it says (the pipeline: "pipeline")
    model: str | None = None

    def add(self, first_frame: int, meta: dict) -> None:
        if "model" in meta:
            self.model = str(meta["model"])
        if "depth_source" in meta:
            self.depth_sources.setdefault(str(meta["depth_source"]), []).append(first_frame)
        if "chain" in meta:
            self.chain.append({"first_frame": first_frame,
                               "steps": [{k: v for k, v in st.items() if k != "items"}
                                         for st in meta["chain"]["steps"]],
                               "problems": meta["chain"]["problems"]})


def _depth_meta(sources: dict[str, list[int]], video_id: str) -> dict:
    """The video's ``depth_source`` from its windows' (none recorded: nothing to say)."""
    if len(sources) <= 1:
        return {"depth_source": next(iter(sources))} if sources else {}
    log.warning("%s: the windows disagree on where depth came from (%s): depth_source is 'mixed'",
                video_id or "video", ", ".join(f"{s} from frame {f[0]}" for s, f in sources.items()))
    return {"depth_source": "mixed", "depth_source_windows": sources}


def _chunks_to_frames(chunks: Iterable[Video4D]) -> Iterator[Frame]:
    """Consecutive chunks -> their frames, numbered by position in the whole video."""
    pos = 0
    for chunk in chunks:
        for t in range(chunk.num_frames):
            yield Frame(
                index=int(chunk.frame_indices[t]),
                position=pos,
                rgb=chunk.rgb[t],
                depth=None if chunk.depth is None else chunk.depth[t],
            )
            pos += 1
