"""The canonical psg4d dataset layout (what ``psg4d data convert`` writes): reader and writer.

Layout::

    psg4d_dataset.json   {"format_version": 1, "name", "splits": {split: [video ids]},
                          "object_vocab", "predicate_vocab", "has_depth",
                          "graph_index": {video id: [split, byte offset]}}   (marker)
    graphs/<split>.jsonl one scene graph per line (psg4d.data.schema JSON, with tubes)
    videos/<video>.npz   rgb uint8 [T, H, W, 3]; depth float32 [T, H, W] (optional);
                         intrinsics float64 [3, 3] (optional); fps (scalar);
                         frame_indices int64 [T]

``graphs/<split>.jsonl`` is directly usable as a ground-truth file
(:func:`psg4d.data.schema.iter_scene_graphs`); ``graph_index`` holds each
video's byte offset in the first split file that lists it, so that reading one
graph seeks to its line instead of parsing the whole split. Videos are stored
uncompressed (``np.savez``): decoding speed matters more than disk here.
"""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from psg4d.data.readers._util import as_int, expect, get_field, safe_rel_path
from psg4d.data.readers.base import DatasetReader, IndexedReader
from psg4d.data.schema import SceneGraph4D, Video4D
from psg4d.errors import DataError
from psg4d.utils.io import atomic_dir

log = logging.getLogger(__name__)

INDEX_FILE = "psg4d_dataset.json"
FORMAT_VERSION = 1
GRAPH_DIR = "graphs"
VIDEO_DIR = "videos"


class CanonicalReader(IndexedReader):
    """Lazy reader of the canonical layout (see the module docstring). Its
    entries are ``graph_index``: video id -> (split file, byte offset)."""

    format_name = "canonical"
    marker = INDEX_FILE
    has_depth = True

    def _load_index(self, index: Any) -> None:
        where = self._index_path
        version = get_field(index, "format_version", where, types=int)
        expect(version == FORMAT_VERSION, where, f"format_version {version} is not supported (this psg4d reads {FORMAT_VERSION})")
        self._object_vocab = [str(c) for c in get_field(index, "object_vocab", where, types=list)]
        self._predicate_vocab = [str(c) for c in get_field(index, "predicate_vocab", where, types=list)]
        self._has_depth = bool(index.get("has_depth", False))
        self._name = str(index.get("name", ""))
        self._entries: dict[str, tuple[str, int]] = {}
        for vid, loc in get_field(index, "graph_index", where, types=dict).items():
            expect(isinstance(loc, list) and len(loc) == 2, where, f"graph_index[{vid!r}] must be [split, offset]")
            self._entries[str(vid)] = (str(loc[0]), as_int(loc[1], where, f"graph_index[{vid!r}] offset"))
        self._splits = self._split_lists(get_field(index, "splits", where, types=dict), field="splits")
        for name in self._splits:
            safe_rel_path(name, where)  # a split names its graph file, graphs/<split>.jsonl
        for vid, (split, _) in self._entries.items():
            expect(split in self._splits, where, f"graph_index[{vid!r}] names unknown split {split!r}")

    @property
    def name(self) -> str:
        return self._name

    @property
    def dataset_has_depth(self) -> bool:
        return self._has_depth

    def num_frames(self, video_id: str) -> int:
        return self.read_graph(video_id, with_masks=False).num_frames

    def read_graph(self, video_id: str, *, with_masks: bool = True) -> SceneGraph4D:
        split, offset = self._entry(video_id)
        path = self.root / GRAPH_DIR / f"{split}.jsonl"
        if not path.is_file():
            raise DataError(path, "file not found")
        with open(path, "rb") as f:
            f.seek(offset)
            line = f.readline()
        try:
            d = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(path, f"byte {offset}: malformed JSON line ({e})") from None
        where = f"{path}@{offset}"
        g = SceneGraph4D.from_json(d, where=where)
        if g.video_id != video_id:
            raise DataError(path, f"byte {offset} holds video {g.video_id!r}, index says {video_id!r}")
        if not with_masks:
            for o in g.objects:
                o.tube = None
        return g.validate(where)

    def read_video(self, video_id: str) -> Video4D:
        self._entry(video_id)
        path = self.root / VIDEO_DIR / f"{video_id}.npz"
        if not path.is_file():
            raise DataError(path, "missing video file")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise DataError(path, f"cannot read video archive: {e}") from None
        expect("rgb" in arrays, path, "video archive has no 'rgb' array")
        video = Video4D(
            rgb=arrays["rgb"],
            depth=arrays.get("depth"),
            intrinsics=arrays.get("intrinsics"),
            fps=float(arrays["fps"]) if "fps" in arrays else 5.0,
            frame_indices=arrays.get("frame_indices"),
            video_id=video_id,
        )
        return video.validate(path)


def _save_video(path: Path, video: Video4D) -> None:
    arrays: dict[str, Any] = {
        "rgb": np.ascontiguousarray(video.rgb, dtype=np.uint8),
        "fps": np.asarray(video.fps, dtype=np.float64),
        "frame_indices": np.asarray(video.frame_indices, dtype=np.int64),
    }
    if video.depth is not None:
        arrays["depth"] = np.asarray(video.depth, dtype=np.float32)
    if video.intrinsics is not None:
        arrays["intrinsics"] = np.asarray(video.intrinsics, dtype=np.float64)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def write_canonical(
    reader: DatasetReader,
    out: str | Path,
    *,
    split: str | None = None,
    name: str | None = None,
    progress: bool = True,
) -> dict:
    """Convert ``reader``'s dataset (one ``split`` or all) into the canonical layout at ``out``.

    Everything is written into a temporary sibling folder that replaces ``out``
    only when complete, so a failure never leaves a half-converted dataset.
    Returns the written index (without ``graph_index``) plus counts.
    """
    out = Path(out)
    splits = [split] if split is not None else reader.splits
    for s in splits:
        if s not in reader.splits:
            raise DataError(reader.root, f"no split {s!r} (splits: {', '.join(reader.splits)})")
    order = {s: reader.video_ids(s) for s in splits}
    total = sum(len(v) for v in order.values())
    graph_index: dict[str, list] = {}
    has_depth = False
    n_frames = 0
    with atomic_dir(out) as tmp:
        (tmp / GRAPH_DIR).mkdir()
        (tmp / VIDEO_DIR).mkdir()
        bar = tqdm(total=total, desc=f"convert {reader.format_name}", unit="video", disable=not progress)
        try:
            for s in splits:
                safe_rel_path(s, reader.root)
                with open(tmp / GRAPH_DIR / f"{s}.jsonl", "wb") as f:
                    for vid in order[s]:
                        if vid not in graph_index:
                            sample = reader.read(vid)
                            safe_rel_path(vid, reader.root)
                            (tmp / VIDEO_DIR / Path(vid)).parent.mkdir(parents=True, exist_ok=True)
                            _save_video(tmp / VIDEO_DIR / f"{vid}.npz", sample.video)
                            graph = sample.graph
                            has_depth = has_depth or sample.video.depth is not None
                            n_frames += sample.video.num_frames
                            graph_index[vid] = [s, f.tell()]
                        else:
                            graph = reader.read_graph(vid)
                        f.write(json.dumps(graph.to_json()).encode("utf-8"))
                        f.write(b"\n")
                        bar.update(1)
        finally:
            bar.close()
        index = {
            "format_version": FORMAT_VERSION,
            "name": name or reader.root.name,
            "source_format": reader.format_name,
            "splits": order,
            "object_vocab": reader.object_vocab,
            "predicate_vocab": reader.predicate_vocab,
            "has_depth": has_depth,
        }
        with open(tmp / INDEX_FILE, "w") as f:
            json.dump({**index, "graph_index": graph_index}, f)
    log.info("wrote %d videos (%d frames) to %s", len(graph_index), n_frames, out)
    return {**index, "num_videos": len(graph_index), "num_frames": n_frames}
