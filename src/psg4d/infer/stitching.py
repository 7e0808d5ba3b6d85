"""Stitching window scene graphs into one video-level graph (:class:`StitchState`), window by window.

What each step decides (identities by volumetric mask IoU on the shared frames, then re-entry of
tracks the overlap did not show, the later window owning shared frames from the middle of the
overlap on, relation spans merged and scored by the maximum over windows) is described in
:mod:`psg4d.infer.streaming`. Frames that are final go to
one spool file per track (``position<TAB>RLE JSON`` lines) and the source frame numbers to
``frame_indices.txt``; :mod:`psg4d.infer.stream_writer` assembles the output from them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from psg4d.data.masks import mask_iou
from psg4d.data.schema import SceneGraph4D, merge_spans, rle_decode
from psg4d.data.video_io import VideoWindow
from psg4d.errors import DataError


@dataclass(kw_only=True)
class Track:
    """One video-level object: what the windows agreed on, and its masks of the open overlap."""

    track_id: int
    category: str
    is_thing: bool
    score: float | None
    file: Path  # spool of its final frames
    # position -> RLE (None = absent) for frames predicted but not yet final
    recent: dict[int, dict | None] = field(default_factory=dict)
    # the re-entry memory: the centre of its last mask (as a fraction of the frame's height and
    # width), where that was, and how it looks (a colour histogram under its masks, averaged over
    # the windows that saw it)
    last_centre: np.ndarray | None = None  # [2]
    last_pos: int = -1
    # first and last final frame with a mask (what the output reports per object)
    first_frame: int | None = None
    last_frame: int | None = None
    appearance: np.ndarray | None = None  # [3 * APPEARANCE_BINS], sums to 1


@dataclass(kw_only=True)
class RelationState:
    """One video-level ``<subject track, predicate, object track>``: merged spans, best score."""

    spans: list[tuple[int, int]]
    score: float | None


def _norm(category: str) -> str:
    return category.strip().lower()


APPEARANCE_BINS = 8  # per colour channel


def appearance(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """The colour histogram (``APPEARANCE_BINS`` per channel, the three concatenated, sums to 1) of
    frame ``rgb [h, w, 3]`` under ``mask [H, W]`` (any size: sampled at the frame's); None when
    the mask covers no pixel of the frame."""
    h, w = rgb.shape[:2]
    ys = np.arange(h) * mask.shape[0] // h
    xs = np.arange(w) * mask.shape[1] // w
    px = rgb[mask[ys][:, xs]]  # [P, 3]
    if px.shape[0] == 0:
        return None
    hist = np.concatenate([np.bincount(px[:, c].astype(int) * APPEARANCE_BINS // 256, minlength=APPEARANCE_BINS)
                           for c in range(3)]).astype(np.float64)
    return hist / hist.sum()


def centre(mask: np.ndarray) -> np.ndarray | None:
    """``[2]``: the centre of ``mask [H, W]`` as fractions of its height and width (None: empty)."""
    # the mean of the rows and columns weighted by their pixel counts, without listing the pixels
    ys, xs = mask.sum(axis=1), mask.sum(axis=0)
    if not ys.any():
        return None
    return np.array([(ys * np.arange(mask.shape[0])).sum() / ys.sum() / mask.shape[0],
                     (xs * np.arange(mask.shape[1])).sum() / xs.sum() / mask.shape[1]])


def _centre_closeness(a: np.ndarray, b: np.ndarray, hw: tuple[int, int]) -> float:
    """1 where two centres (:func:`centre`) coincide, 0 at half the frame's diagonal apart or more."""
    h, w = hw
    d = np.hypot((a[0] - b[0]) * h, (a[1] - b[1]) * w)
    return float(max(0.0, 1.0 - d / (0.5 * np.hypot(h, w))))


def _combine(a: float | None, b: float | None) -> float | None:
    """The maximum of two scores, either of which may be missing."""
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


class StitchState:
    """Tracks, relations and on-disk RLE files of one streaming run."""

    def __init__(self, *, work: Path, iou_threshold: float, reentry_frames: int = 0,
                 reentry_threshold: float = 0.75):
        self.work = work
        self.iou_threshold = iou_threshold
        # a track unseen for at most this many frames may take back a new object of its category
        # whose appearance and place agree (0: never)
        self.reentry_frames = reentry_frames
        self.reentry_threshold = reentry_threshold
        self.tracks: list[Track] = []
        self.relations: dict[tuple[int, int, str], RelationState] = {}
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
        """Match ``graph``'s objects to the tracks, make final what the earlier windows own, and take
        in the window's masks and relations."""
        s, n = win.start, win.video.num_frames
        self._check_window(win, graph)
        self.object_vocab = self.object_vocab or graph.object_vocab
        self.predicate_vocab = self.predicate_vocab or graph.predicate_vocab

        assign = self._match(s, graph)
        assign.update(self._reenter(win, graph, assign))
        # the later window owns shared frames from the middle of the overlap on (a tail window
        # may start before frames already made final; its predictions for those are dropped)
        overlap = max(0, self.stop - s)
        self._commit(max(self.committed, min(self.stop, s + overlap // 2)))

        for t in range(n):
            if s + t >= self.committed:
                self.pending_indices[s + t] = int(win.video.frame_indices[t])
        local_to_track = self._update_tracks(win, graph, assign)
        self._pool_relations(s, graph, local_to_track)
        self.stop = max(self.stop, s + n)
        self.num_windows += 1

    def _check_window(self, win: VideoWindow, graph: SceneGraph4D) -> None:
        """DataError unless ``graph`` is a valid graph of ``win`` that continues the earlier windows."""
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

    def _update_tracks(self, win: VideoWindow, graph: SceneGraph4D, assign: dict[int, int]) -> dict[int, int]:
        """Extend the matched tracks and start new ones with the window's masks of the frames not yet
        final (and their re-entry memory); tracks the window does not see are absent there. Returns
        window object id -> track id."""
        s, n = win.start, win.video.num_frames
        local_to_track: dict[int, int] = {}
        for k, obj in enumerate(graph.objects):
            if k in assign:
                tr = self.tracks[assign[k]]
                tr.score = _combine(tr.score, obj.score)
            else:
                tr = Track(
                    track_id=len(self.tracks), category=obj.majority_category(), is_thing=obj.is_thing,
                    score=obj.score, file=self.work / f"track_{len(self.tracks)}.rle",
                )
                self.tracks.append(tr)
            local_to_track[obj.object_id] = tr.track_id
            for t in range(n):
                if s + t >= self.committed:
                    tr.recent[s + t] = None if obj.tube is None else obj.tube.rles[t]
            if self.reentry_frames > 0:
                self._remember(tr, win, obj)
        matched = set(local_to_track.values())
        for tr in self.tracks:
            if tr.track_id not in matched:
                for p in range(max(s, self.committed), s + n):
                    if p in tr.recent:
                        tr.recent[p] = None
        return local_to_track

    def _pool_relations(self, s: int, graph: SceneGraph4D, local_to_track: dict[int, int]) -> None:
        """Add the window's relations, spans moved to video positions, to the video's."""
        for r in graph.relations:
            key = (local_to_track[r.subject_id], local_to_track[r.object_id], r.predicate)
            spans = [(s + a, s + b) for a, b in r.spans]
            st = self.relations.get(key)
            if st is None:
                self.relations[key] = RelationState(spans=merge_spans(spans), score=r.score)
            else:
                st.spans = merge_spans(st.spans + spans)
                st.score = _combine(st.score, r.score)

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
        iou = np.zeros((len(graph.objects), len(cands)))  # [N_window_objects, N_candidate_tracks]
        for a, o in enumerate(graph.objects):
            for b, ti in enumerate(cands):
                if _norm(o.majority_category()) != _norm(self.tracks[ti].category):
                    continue
                iou[a, b] = mask_iou(obj_masks[a], track_masks[b], dims=3)  # volumetric; 0 when both are empty
        rows, cols = linear_sum_assignment(-iou)
        return {int(a): cands[int(b)] for a, b in zip(rows, cols) if iou[a, b] >= self.iou_threshold}

    def _remember(self, tr: Track, win: VideoWindow, obj) -> None:
        """``tr``'s re-entry memory from window object ``obj``: its last mask in the window and the
        colour histogram under its first and last masks."""
        present = [t for t in range(win.video.num_frames) if obj.tube is not None and obj.tube.rles[t] is not None]
        if not present:
            return
        for t in sorted({present[0], present[-1]}):
            mask = rle_decode(obj.tube.rles[t])
            h = appearance(win.video.rgb[t], mask)
            if h is not None:
                tr.appearance = h if tr.appearance is None else 0.5 * (tr.appearance + h)
            if t == present[-1]:
                tr.last_centre, tr.last_pos = centre(mask), win.start + t

    def _reenter(self, win: VideoWindow, graph: SceneGraph4D, assign: dict[int, int]) -> dict[int, int]:
        """Window objects no overlap matched -> tracks of their category unseen in this window's
        shared frames for at most ``reentry_frames`` frames, one-to-one (Hungarian) on the mean of
        their appearance similarity (histogram intersection) and how close their masks' centres
        are (the track's last mask, the object's first); a pair links at ``reentry_threshold``."""
        if self.reentry_frames <= 0:
            return {}
        s = win.start
        taken = set(assign.values())
        memory = [i for i, tr in enumerate(self.tracks) if i not in taken and tr.last_centre is not None
                  and tr.appearance is not None and 0 <= s - tr.last_pos <= self.reentry_frames
                  and all(tr.recent.get(p) is None for p in range(s, self.stop))]
        if not memory:
            return {}
        remembered = {_norm(self.tracks[i].category) for i in memory}
        objs = []
        for a, o in enumerate(graph.objects):
            if a in assign or o.tube is None or _norm(o.majority_category()) not in remembered:
                continue
            present = [t for t in range(win.video.num_frames) if o.tube.rles[t] is not None]
            if not present:
                continue
            first = rle_decode(o.tube.rles[present[0]])
            app, c = appearance(win.video.rgb[present[0]], first), centre(first)
            if app is not None and c is not None:
                objs.append((a, _norm(o.majority_category()), c, app))
        if not objs:
            return {}
        assert self.hw is not None
        score = np.zeros((len(objs), len(memory)))  # [N_new_objects, N_remembered_tracks]
        for i, (_, cat, c, app) in enumerate(objs):
            for j, ti in enumerate(memory):
                tr = self.tracks[ti]
                if cat == _norm(tr.category):
                    score[i, j] = (0.5 * float(np.minimum(app, tr.appearance).sum())
                                   + 0.5 * _centre_closeness(c, tr.last_centre, self.hw))
        rows, cols = linear_sum_assignment(-score)
        return {objs[i][0]: memory[j] for i, j in zip(rows, cols) if score[i, j] >= self.reentry_threshold}

    def _dense(self, rles: list[dict | None]) -> np.ndarray:
        """RLEs (None: empty) -> bool ``[T, H, W]``; only ever the few frames of one overlap."""
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
                    tr.first_frame = p if tr.first_frame is None else tr.first_frame
                    tr.last_frame = p
            if lines:
                with open(tr.file, "a") as f:
                    f.writelines(lines)
        with open(self.index_file, "a") as f:
            f.writelines(f"{self.pending_indices.pop(p)}\n" for p in range(self.committed, upto))
        self.committed = upto

    def finish(self) -> None:
        """Make every frame seen final (after the last window)."""
        self._commit(self.stop)
