"""Scene graphs of arbitrarily long videos with bounded memory.

A window predictor (``psg4d.infer.predictor.Predictor(model).predict`` or any
``Callable[[Video4D], SceneGraph4D]``) sees overlapping windows of ``window``
frames every ``stride`` frames. :class:`StreamingPredictor` stitches the
window graphs into one video-level graph:

* **Identities.** Each window's objects are matched to the running tracks by
  category and mask IoU over the frames the window shares with what came
  before (volumetric IoU: intersections and unions summed over those frames),
  one-to-one with the Hungarian algorithm; a pair is linked only if its IoU
  reaches ``iou_threshold``. Unmatched objects start new tracks. A track that
  is not visible in an overlap cannot be re-identified later (no appearance
  model), so it stays a separate object.
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
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from scipy.optimize import linear_sum_assignment
from tqdm import tqdm

from psg4d.data.masks import mask_iou
from psg4d.data.schema import SCHEMA_VERSION, SceneGraph4D, Video4D, merge_spans, rle_decode
from psg4d.errors import ConfigError, DataError
from psg4d.data.video_io import Frame, VideoWindow, windows_from_frames
from psg4d.utils.io import atomic_path

log = logging.getLogger(__name__)

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


@dataclass(kw_only=True)
class _Track:
    track_id: int
    category: str
    is_thing: bool
    score: float | None
    file: Path
    # position -> RLE (None = absent) for frames predicted but not yet final
    recent: dict[int, dict | None] = field(default_factory=dict)


@dataclass(kw_only=True)
class _RelationState:
    spans: list[tuple[int, int]]
    score: float | None


def _norm(category: str) -> str:
    return category.strip().lower()


def _combine(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


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
        self.predict_window = predict_window
        self.window = window
        self.stride = stride
        self.iou_threshold = iou_threshold
        self.max_relations = max_relations
        self.progress = progress

    # ------------------------------------------------------------------ input

    def _windows(self, frames: Iterable, fps: float, video_id: str) -> Iterator[VideoWindow]:
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
            state = _StitchState(work=work, iou_threshold=self.iou_threshold)
            total_windows = (
                None if total_frames is None else max(1, math.ceil(max(0, total_frames - self.window) / self.stride) + 1)
            )
            bar = tqdm(
                self._windows(frames, fps, video_id), total=total_windows, unit="win",
                desc=f"streaming {video_id}".strip(), disable=not self.progress,
            )
            chain: list[dict] = []  # chained inference: each window's turns, so its reasoning stays readable
            depth_sources: dict[str, list[int]] = {}  # depth source -> first frames of the windows that used it
            for win in bar:
                graph = self.predict_window(win.video)
                if "depth_source" in graph.meta:
                    depth_sources.setdefault(str(graph.meta["depth_source"]), []).append(
                        int(win.video.frame_indices[0]))
                if "chain" in graph.meta:
                    chain.append({"first_frame": int(win.video.frame_indices[0]),
                                  "steps": [{k: v for k, v in st.items() if k != "items"}
                                            for st in graph.meta["chain"]["steps"]],
                                  "problems": graph.meta["chain"]["problems"]})
                state.add_window(win, graph)
            if state.num_windows == 0:
                raise DataError(video_id or "video", "no frames to predict on")
            state.finish()
            meta = {
                **(meta or {}),
                "fps": fps,
                "streaming": {
                    "window": self.window,
                    "stride": self.stride,
                    "iou_threshold": self.iou_threshold,
                    "num_windows": state.num_windows,
                    "relation_score": "max over windows",
                    "max_relations": self.max_relations,
                    "relations_stitched": len(state.relations),
                },
                **_depth_meta(depth_sources, video_id),
                **({"mode": "chain", "chain": {"windows": chain, "problems": sum(w["problems"] for w in chain)}}
                   if chain else {}),
            }
            with atomic_path(out_path) as tmp:
                written = state.write_graph(tmp, video_id=video_id, meta=meta, max_relations=self.max_relations)
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


def _depth_meta(sources: dict[str, list[int]], video_id: str) -> dict:
    """The video's ``depth_source`` from its windows' (none recorded: nothing to say)."""
    if len(sources) <= 1:
        return {"depth_source": next(iter(sources))} if sources else {}
    log.warning("%s: the windows disagree on where depth came from (%s): depth_source is 'mixed'",
                video_id or "video", ", ".join(f"{s} from frame {f[0]}" for s, f in sources.items()))
    return {"depth_source": "mixed", "depth_source_windows": sources}


def _chunks_to_frames(chunks: Iterable[Video4D]) -> Iterator[Frame]:
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


class _StitchState:
    """Tracks, relations and on-disk RLE files of one streaming run."""

    def __init__(self, *, work: Path, iou_threshold: float):
        self.work = work
        self.iou_threshold = iou_threshold
        self.tracks: list[_Track] = []
        self.relations: dict[tuple[int, int, str], _RelationState] = {}
        self.committed = 0  # positions < committed are final and on disk
        self.stop = 0  # end of the frames seen so far
        self.hw: tuple[int, int] | None = None
        self.num_windows = 0
        self.object_vocab: list[str] | None = None
        self.predicate_vocab: list[str] | None = None
        self.index_file = work / "frame_indices.txt"
        self.pending_indices: dict[int, int] = {}  # position -> source frame number, not yet final

    # -- one window
    def add_window(self, win: VideoWindow, graph: SceneGraph4D) -> None:
        s, n = win.start, win.video.num_frames
        where = f"window predictor output for frames [{s}, {s + n - 1}]"
        if graph.num_frames != n:
            raise DataError(where, f"scene graph has {graph.num_frames} frames, the window has {n}")
        graph.validate(where)
        if self.hw is None:
            self.hw = (graph.height, graph.width)
        elif (graph.height, graph.width) != self.hw:
            raise DataError(where, f"mask size {graph.height}x{graph.width} differs from earlier windows' {self.hw}")
        if s > self.stop:
            raise DataError(where, f"window starts at {s}, leaving a gap after frame {self.stop - 1}")
        self.object_vocab = self.object_vocab or graph.object_vocab
        self.predicate_vocab = self.predicate_vocab or graph.predicate_vocab

        assign = self._match(s, graph)
        # the later window owns shared frames from the middle of the overlap on (a tail window
        # may start before frames already made final; its predictions for those are dropped)
        overlap = max(0, self.stop - s)
        self._commit(max(self.committed, min(self.stop, s + overlap // 2)))

        for t in range(n):
            if s + t >= self.committed:
                self.pending_indices[s + t] = int(win.video.frame_indices[t])
        local_to_track: dict[int, int] = {}
        for k, obj in enumerate(graph.objects):
            if k in assign:
                tr = self.tracks[assign[k]]
                tr.score = _combine(tr.score, obj.score)
            else:
                tr = _Track(
                    track_id=len(self.tracks), category=obj.majority_category(), is_thing=obj.is_thing,
                    score=obj.score, file=self.work / f"track_{len(self.tracks)}.rle",
                )
                self.tracks.append(tr)
            local_to_track[obj.object_id] = tr.track_id
            for t in range(n):
                if s + t >= self.committed:
                    tr.recent[s + t] = None if obj.tube is None else obj.tube.rles[t]
        matched = set(local_to_track.values())
        for tr in self.tracks:
            if tr.track_id not in matched:
                for p in range(max(s, self.committed), s + n):
                    if p in tr.recent:
                        tr.recent[p] = None

        for r in graph.relations:
            key = (local_to_track[r.subject_id], local_to_track[r.object_id], r.predicate)
            spans = [(s + a, s + b) for a, b in r.spans]
            st = self.relations.get(key)
            if st is None:
                self.relations[key] = _RelationState(spans=merge_spans(spans), score=r.score)
            else:
                st.spans = merge_spans(st.spans + spans)
                st.score = _combine(st.score, r.score)
        self.stop = max(self.stop, s + n)
        self.num_windows += 1

    def _match(self, s: int, graph: SceneGraph4D) -> dict[int, int]:
        """Window object index -> track index, by category and volumetric mask IoU on shared frames."""
        positions = list(range(max(s, self.committed), self.stop))
        if not positions or not graph.objects or not self.tracks:
            return {}
        assert self.hw is not None
        cands = [i for i, tr in enumerate(self.tracks) if any(tr.recent.get(p) is not None for p in positions)]
        if not cands:
            return {}
        track_masks = [self._dense([self.tracks[i].recent.get(p) for p in positions]) for i in cands]
        obj_masks = [
            self._dense([None if o.tube is None else o.tube.rles[p - s] for p in positions]) for o in graph.objects
        ]
        iou = np.zeros((len(graph.objects), len(cands)))
        for a, o in enumerate(graph.objects):
            for b, ti in enumerate(cands):
                if _norm(o.majority_category()) != _norm(self.tracks[ti].category):
                    continue
                iou[a, b] = mask_iou(obj_masks[a], track_masks[b], dims=3)  # volumetric; 0 when both are empty
        rows, cols = linear_sum_assignment(-iou)
        return {int(a): cands[int(b)] for a, b in zip(rows, cols) if iou[a, b] >= self.iou_threshold}

    def _dense(self, rles: list[dict | None]) -> np.ndarray:
        assert self.hw is not None
        out = np.zeros((len(rles), *self.hw), dtype=bool)
        for t, r in enumerate(rles):
            if r is not None:
                out[t] = rle_decode(r)
        return out

    def _commit(self, upto: int) -> None:
        """Write frames ``[committed, upto)`` of every track to disk and forget them."""
        if upto <= self.committed:
            return
        for tr in self.tracks:
            lines = []
            for p in range(self.committed, upto):
                r = tr.recent.pop(p, None)
                if r is not None:
                    lines.append(f"{p}\t{json.dumps(r)}\n")
            if lines:
                with open(tr.file, "a") as f:
                    f.writelines(lines)
        with open(self.index_file, "a") as f:
            f.writelines(f"{self.pending_indices.pop(p)}\n" for p in range(self.committed, upto))
        self.committed = upto

    def finish(self) -> None:
        self._commit(self.stop)

    # -- output
    def write_graph(self, path: Path, *, video_id: str, meta: dict, max_relations: int | None = None) -> int:
        """Assemble the scene-graph JSON from the per-track files without loading them whole; the
        best ``max_relations`` relations by score are written (their count is returned)."""
        assert self.hw is not None
        h, w = self.hw
        n = self.committed
        ranked = sorted(
            self.relations.items(), key=lambda kv: (-(kv[1].score if kv[1].score is not None else -math.inf), kv[0])
        )[:max_relations]
        with open(path, "w") as f:
            head = {"schema_version": SCHEMA_VERSION, "video_id": video_id, "num_frames": n, "height": h, "width": w}
            f.write(json.dumps(head)[:-1])
            f.write(', "objects": [')
            for i, tr in enumerate(self.tracks):
                if i:
                    f.write(", ")
                obj = {"object_id": tr.track_id, "category": tr.category, "is_thing": tr.is_thing}
                f.write(json.dumps(obj)[:-1])
                f.write(f', "tube": {{"size": [{h}, {w}], "rles": [')
                self._write_rles(f, tr, n)
                f.write("]}")
                if tr.score is not None:
                    f.write(f', "score": {json.dumps(tr.score)}')
                f.write("}")
            f.write('], "relations": [')
            for i, ((sid, oid, pred), st) in enumerate(ranked):
                rel = {"subject_id": sid, "object_id": oid, "predicate": pred, "spans": [list(x) for x in st.spans]}
                if st.score is not None:
                    rel["score"] = st.score
                f.write((", " if i else "") + json.dumps(rel))
            f.write("]")
            if self.object_vocab is not None:
                f.write(f', "object_vocab": {json.dumps(self.object_vocab)}')
            if self.predicate_vocab is not None:
                f.write(f', "predicate_vocab": {json.dumps(self.predicate_vocab)}')
            f.write(f', "meta": {json.dumps(meta)[:-1]}, "frame_indices": [')
            with open(self.index_file) as idx:
                for i, line in enumerate(idx):
                    f.write(("," if i else "") + line.strip())
            f.write("]}}\n")
        return len(ranked)

    @staticmethod
    def _write_rles(f, tr: _Track, n: int) -> None:
        nxt = 0
        if tr.file.exists():
            with open(tr.file) as src:
                for line in src:
                    pos_s, rle = line.rstrip("\n").split("\t", 1)
                    pos = int(pos_s)
                    f.write("null, " * (pos - nxt))
                    f.write(rle + (", " if pos < n - 1 else ""))
                    nxt = pos + 1
        # in chunks: a track that vanished early must not cost a list as long as the video
        while nxt < n:
            k = min(4096, n - nxt)
            f.write(", ".join(["null"] * k) + (", " if nxt + k < n else ""))
            nxt += k
