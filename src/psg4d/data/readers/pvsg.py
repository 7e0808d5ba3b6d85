"""PVSG (Panoptic Video Scene Graphs, OpenPVSG): reader. RGB only.

Layout (``LilyDaytoy/OpenPVSG`` README, ``data/`` after ``unzip_and_extract.py``)::

    pvsg.json                              annotation index (marker)
    <source>/frames/<video>/<t:04d>.png    RGB frames (source: vidor, epic_kitchen, ego4d)
    <source>/masks/<video>/<t:04d>.png     object-id maps (pixel value = object id, 0 = void)

Index::

    {"objects": {"thing": [...], "stuff": [...]}, "relations": [predicates],
     "split": {<source>: {"train": [video ids], "val": [...]}},
     "data": [{"video_id", "meta": {"height", "width", "fps", "num_frames"},
               "objects": [{"object_id", "category", "is_thing"}],
               "relations": [[subject_id, object_id, predicate, [[start, end], ...]]]}]}

A video's ``<source>`` folder is the ``split`` key that lists it. Frame and
mask files share a name, the frame number (``0000.png``, as the public loader
reads it with ``int(stem)``); files are listed and sorted by that number, and
their count must equal ``meta.num_frames``. Splits are
merged across sources (``train``, ``val``). Spans are inclusive frame indices;
one relation may hold several spans. A video not listed under any source is
looked up directly under the root (``frames/<video>``).

An object's ``object_id`` must be its position in ``objects`` + 1, as OpenPVSG
looks a mask value's object up as ``objects[object_id - 1]``; a file that breaks
this is refused, not renumbered.

A relation whose predicate is not in ``relations`` is dropped, as OpenPVSG's
loader drops it (``utils/relation_matching.py``), so that psg4d scores against
the ground truth the official evaluator uses; the graph's
``meta["relations_dropped_unknown_predicate"]`` counts them and ``psg4d data
inspect`` reports the total.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from psg4d.data.readers._util import (
    TubeBuilder,
    as_int,
    expect,
    get_field,
    int_field,
    load_frames,
    load_image_array,
    merged_relations,
    parse_span,
    safe_rel_path,
    thing_stuff_classes,
)
from psg4d.data.readers.base import IndexedReader
from psg4d.data.schema import ObjectTrack, SceneGraph4D, Video4D

INDEX_FILE = "pvsg.json"
DROPPED_UNKNOWN_PREDICATE = "relations_dropped_unknown_predicate"
FRAME_DIR = "frames"
MASK_DIR = "masks"
FRAME_SUFFIX = ".png"
DEFAULT_FPS = 5.0


class PVSGReader(IndexedReader):
    """Lazy reader of the OpenPVSG layout (see the module docstring)."""

    format_name = "pvsg"
    marker = INDEX_FILE
    has_depth = False

    def _load_index(self, index: Any) -> None:
        where = self._index_path
        objs = get_field(index, "objects", where, types=dict)
        things, stuff = thing_stuff_classes(objs, where)
        self._object_vocab = things + stuff
        self._stuff = set(stuff)
        self._predicate_vocab = [str(p) for p in get_field(index, "relations", where, types=list)]
        self._entries = self._entries_by_id(get_field(index, "data", where, types=list), "video_id", paths=True)
        # split: {source: {split: [video ids]}}; a video's source is the folder holding its files
        self._source: dict[str, str] = {}
        raw = index.get("split")
        if raw is None:
            self._splits = {"all": list(self._entries)}
            return
        expect(isinstance(raw, dict), where, "'split' must be {source: {split: [video ids]}}", field="split")
        self._splits = {}
        for source, parts in raw.items():
            safe_rel_path(str(source), where)
            expect(isinstance(parts, dict), where, f"split {source!r} must map split names to lists", field="split")
            for name, vids in self._split_lists(parts, field="split", prefix=f"{source}/").items():
                for v in vids:
                    self._source[v] = str(source)
                self._splits.setdefault(name, []).extend(vids)

    def _folder(self, kind: str, video_id: str) -> Path:
        src = self._source.get(video_id)
        return (self.root / src if src else self.root) / kind / video_id

    def _meta(self, video_id: str) -> tuple[int, int, int, float]:
        """``(T, H, W, fps)``: PVSG's ``meta`` is required."""
        e = self._entry(video_id)
        ctx = f"video {video_id!r}: meta"
        m = get_field(e, "meta", self._index_path, ctx=f"video {video_id!r}", types=dict)
        T, H, W = (int_field(m, k, self._index_path, ctx) for k in ("num_frames", "height", "width"))
        return T, H, W, float(m.get("fps", DEFAULT_FPS))

    def num_frames(self, video_id: str) -> int:
        return self._meta(video_id)[0]

    def _frame_stems(self, video_id: str, T: int) -> list[str]:
        """Mask file names (without suffix) sorted by frame number; their count must be ``T``."""
        folder = self._folder(MASK_DIR, video_id)
        stems = [p.stem for p in folder.iterdir() if p.suffix == FRAME_SUFFIX] if folder.is_dir() else []
        for s in stems:
            expect(s.isdigit(), folder / f"{s}{FRAME_SUFFIX}", "mask file name must be a frame number")
        expect(
            len(stems) == T,
            folder,
            f"video {video_id!r}: mask/frame count mismatch: {len(stems)} mask files, index says {T} frames",
        )
        return sorted(stems, key=int)

    def read_graph(self, video_id: str, *, with_masks: bool = True) -> SceneGraph4D:
        """The scene graph; ``with_masks=False`` reads the index only (tubes ``None``)."""
        e = self._entry(video_id)
        where = self._index_path
        ctx = f"video {video_id!r}"
        T, H, W, fps = self._meta(video_id)
        mask_folder = self._folder(MASK_DIR, video_id)
        stems = self._frame_stems(video_id, T) if with_masks else []
        objs = []
        for j, o in enumerate(get_field(e, "objects", where, ctx=ctx, types=list)):
            octx = f"{ctx}: objects[{j}]"
            oid = int_field(o, "object_id", where, octx)
            expect(oid > 0, where, f"{octx}: object_id must be positive (0 is void in the masks)")
            # OpenPVSG finds a mask value's class as objects_info[instance_id - 1] (datasets/pipelines/
            # loading.py:125): any other numbering gives its pixels another object's class there, so it is
            # refused rather than renumbered (the masks hold these ids)
            expect(
                oid == j + 1,
                where,
                f"{octx}: object at position {j} has object_id {oid}; PVSG's loader looks objects up as "
                f"objects[object_id - 1], so it must be {j + 1}",
            )
            cat = str(get_field(o, "category", where, ctx=octx))
            is_thing = bool(o["is_thing"]) if "is_thing" in o else cat not in self._stuff
            objs.append((oid, cat, is_thing))
        builder = TubeBuilder([oid for oid, _, _ in objs], num_frames=T, height=H, width=W)
        for t, stem in enumerate(stems):
            p = mask_folder / f"{stem}{FRAME_SUFFIX}"
            m = load_image_array(p, what="mask")
            expect(m.ndim == 2, p, f"mask must be a single-channel id map, got shape {m.shape}")
            expect(m.shape == (H, W), p, f"mask shape mismatch: {m.shape[0]}x{m.shape[1]}, index says {H}x{W}")
            builder.add_frame(t, m)
        objects = [
            ObjectTrack(object_id=oid, category=c, is_thing=th, tube=builder.tube(oid) if with_masks else None)
            for oid, c, th in objs
        ]
        known = set(self._predicate_vocab)
        triplets = []
        dropped = 0
        for j, r in enumerate(self._entry_list(e, "relations", ctx)):
            rctx = f"{ctx}: relations[{j}]"
            expect(
                isinstance(r, list) and len(r) == 4 and isinstance(r[3], list),
                where,
                f"{rctx}: expected [subject_id, object_id, predicate, [[start, end], ...]]",
            )
            s, o = as_int(r[0], where, f"{rctx} subject"), as_int(r[1], where, f"{rctx} object")
            spans = [parse_span(sp, where, rctx) for sp in r[3]]
            if r[2] not in known:
                dropped += 1
                continue
            triplets.append((s, o, str(r[2]), spans))
        return self._graph(
            video_id,
            size=(T, H, W),
            objects=objects,
            relations=merged_relations(triplets),
            where=where,
            meta={"source": self._source.get(video_id), "fps": fps, DROPPED_UNKNOWN_PREDICATE: dropped},
        )

    def read_video(self, video_id: str) -> Video4D:
        T, H, W, fps = self._meta(video_id)
        stems = self._frame_stems(video_id, T)
        folder = self._folder(FRAME_DIR, video_id)
        video = Video4D(
            rgb=load_frames((folder / f"{stem}{FRAME_SUFFIX}" for stem in stems), size=(H, W)),
            depth=None,
            fps=fps,
            frame_indices=np.array([int(s) for s in stems], dtype=np.int64),
            video_id=video_id,
        )
        return video.validate(self._index_path)
