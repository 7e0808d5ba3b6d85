"""The reader interface every dataset format implements, and what the formats share.

Readers are lazy: opening one reads only the annotation index; frames and
masks are read a video at a time (PSG4D-HOI is 891K frames).

:class:`IndexedReader` holds what every index-file format repeats (reading the
marker file, entries by id, split tables, ``meta``, predicates by name or
index); :class:`ImageReader` adds what single-image formats share. A format
module keeps only its own layout.
"""

from __future__ import annotations

import abc
import logging
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

from psg4d.data.readers._util import as_int, expect, get_field, load_rgb, read_json, safe_rel_path
from psg4d.data.schema import ObjectTrack, Relation, Sample, SceneGraph4D, Video4D
from psg4d.errors import DataError

log = logging.getLogger(__name__)


class DatasetReader(abc.ABC):
    """Base class. Subclasses set ``format_name`` and ``marker`` (the annotation
    file, relative to the root, whose presence identifies the format), and fill
    ``_object_vocab`` and ``_predicate_vocab`` while opening."""

    format_name: ClassVar[str]
    marker: ClassVar[str]
    has_depth: ClassVar[bool] = True
    # The dataset's object masks are boxes, not segmentations (Visual Genome): mask supervision
    # from it teaches boxes.
    masks_are_boxes: ClassVar[bool] = False

    _object_vocab: list[str]
    _predicate_vocab: list[str]

    # Other places the marker file may sit, relative to the root (OpenPSG keeps ``psg/psg.json``).
    alt_markers: ClassVar[tuple[str, ...]] = ()

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._warned_no_depth = False

    @classmethod
    def marker_path(cls, root: str | Path) -> Path | None:
        """The format's marker file under ``root`` (the first of ``marker`` and ``alt_markers`` that exists)."""
        for rel in (cls.marker, *cls.alt_markers):
            p = Path(root) / rel
            if p.is_file():
                return p
        return None

    def _warn_no_depth(self, video_id: str, looked: list[Path]) -> None:
        """Say once per dataset that a format with depth gave a video none: a model
        then silently trains or predicts RGB-only."""
        if self._warned_no_depth:
            return
        self._warned_no_depth = True
        log.warning(
            "%s (format %s): video %r has no depth (looked in %s); reading RGB only (further videos without depth "
            "are not reported)",
            self.root, self.format_name, video_id, ", ".join(str(p) for p in looked),
        )

    # -- index
    @property
    @abc.abstractmethod
    def splits(self) -> list[str]:
        """Split names, e.g. ``["train", "val"]``."""

    @abc.abstractmethod
    def video_ids(self, split: str | None = None) -> list[str]:
        """Video ids of ``split`` (all videos when ``None``)."""

    @property
    def object_vocab(self) -> list[str]:
        return list(self._object_vocab)

    @property
    def predicate_vocab(self) -> list[str]:
        return list(self._predicate_vocab)

    @abc.abstractmethod
    def num_frames(self, video_id: str) -> int:
        """The frame count of one video, from the index where it has it (no frames are read)."""

    # -- per video
    @abc.abstractmethod
    def read_graph(self, video_id: str, *, with_masks: bool = True) -> SceneGraph4D:
        """The ground-truth scene graph of one video; ``with_masks=False`` reads
        the index only (tubes ``None``), for statistics over a whole dataset."""

    @abc.abstractmethod
    def read_video(self, video_id: str) -> Video4D:
        """The frames (and depth where the format has it) of one video."""

    def read(self, video_id: str) -> Sample:
        return Sample(video=self.read_video(video_id), graph=self.read_graph(video_id))

    def iter_samples(self, split: str | None = None) -> Iterator[Sample]:
        for vid in self.video_ids(split):
            yield self.read(vid)

    def iter_graphs(self, split: str | None = None) -> Iterator[SceneGraph4D]:
        for vid in self.video_ids(split):
            yield self.read_graph(vid)

    def _graph(
        self,
        video_id: str,
        *,
        size: tuple[int, int, int],
        objects: list[ObjectTrack],
        relations: list[Relation],
        where: str | Path,
        meta: dict[str, Any],
    ) -> SceneGraph4D:
        """A validated scene graph over this dataset's vocabularies; ``size`` is
        ``(T, H, W)``, ``meta`` follows ``source_format``."""
        T, H, W = size
        graph = SceneGraph4D(
            video_id=video_id,
            num_frames=T,
            height=H,
            width=W,
            objects=objects,
            relations=relations,
            object_vocab=self.object_vocab,
            predicate_vocab=self.predicate_vocab,
            meta={"source_format": self.format_name, **meta},
        )
        return graph.validate(where)


class IndexedReader(DatasetReader):
    """A reader whose annotation index (the marker file, JSON) maps ids to entries.

    Opening parses the marker file and hands it to :meth:`_load_index`, which
    fills ``_entries`` (id -> its annotation entry, in dataset order),
    ``_splits`` (split name -> ids) and the vocabularies. Errors name
    ``_index_path``, the marker file.
    """

    _entries: dict[str, Any]
    _splits: dict[str, list[str]]
    # What an id names in messages ("video", "image").
    item_name: ClassVar[str] = "video"

    def __init__(self, root: str | Path):
        super().__init__(root)
        self._index_path = self.marker_path(self.root) or self.root / self.marker
        self._load_index(read_json(self._index_path))

    @abc.abstractmethod
    def _load_index(self, index: Any) -> None:
        """Fill ``_entries``, ``_splits``, ``_object_vocab`` and ``_predicate_vocab``
        from the parsed marker file."""

    @property
    def splits(self) -> list[str]:
        return list(self._splits)

    def video_ids(self, split: str | None = None) -> list[str]:
        if split is None:
            return list(self._entries)
        if split not in self._splits:
            raise DataError(self._index_path, f"no split {split!r} (splits: {', '.join(self._splits)})")
        return list(self._splits[split])

    def _entry(self, video_id: str) -> Any:
        if video_id not in self._entries:
            raise DataError(self._index_path, f"unknown {self.item_name} id {video_id!r}")
        return self._entries[video_id]

    # -- parsing helpers for _load_index
    def _entries_by_id(self, data: list, id_key: str, *, paths: bool) -> dict[str, Any]:
        """``data``'s entries by their ``id_key`` (a string or an integer). With
        ``paths`` the id names the video's folders, so it must stay inside the root."""
        where = self._index_path
        entries: dict[str, Any] = {}
        for i, e in enumerate(data):
            vid = str(get_field(e, id_key, where, ctx=f"data[{i}]", types=(str, int)))
            if paths:
                safe_rel_path(vid, where)
            if vid in entries:
                raise DataError(where, f"data[{i}]: {self.item_name} {vid!r} appears twice")
            entries[vid] = e
        return entries

    def _split_lists(
        self, raw: Any, *, field: str, prefix: str = "", resolve: Callable[[Any], str | None] | None = None
    ) -> dict[str, list[str]]:
        """A split table ``{name: [ids]}`` with every id checked against the entries
        (``resolve`` maps an id as listed to an entry id, or ``None`` if unknown).
        Without a table (``raw`` is ``None``) every entry is in the split ``all``."""
        if raw is None:
            return {"all": list(self._entries)}
        where, item = self._index_path, self.item_name
        expect(isinstance(raw, dict), where, f"'{field}' must map split names to {item}-id lists", field=field)
        resolve = resolve or self._known_id
        out: dict[str, list[str]] = {}
        for name, ids in raw.items():
            label = f"{prefix}{name}"
            expect(isinstance(ids, list), where, f"split {label!r} must be a list of {item} ids", field=field)
            vids = []
            for k in ids:
                v = resolve(k)
                expect(v is not None, where, f"split {label!r} names unknown {item} {k!r}", field=field)
                vids.append(v)
            out[str(name)] = vids
        return out

    def _known_id(self, key: Any) -> str | None:
        return str(key) if str(key) in self._entries else None

    # -- per-entry helpers
    def _entry_meta(self, video_id: str) -> dict:
        """The entry's optional ``meta`` object (empty when absent)."""
        meta = self._entry(video_id).get("meta") or {}
        expect(isinstance(meta, dict), self._index_path, f"video {video_id!r}: 'meta' must be a JSON object")
        return meta

    def _indexed_num_frames(self, video_id: str) -> int | None:
        """``meta.num_frames`` of the entry, or ``None`` where the index does not say."""
        meta = self._entry_meta(video_id)
        if "num_frames" not in meta:
            return None
        T = as_int(meta["num_frames"], self._index_path, f"video {video_id!r}: meta.num_frames")
        expect(T > 0, self._index_path, f"video {video_id!r}: meta.num_frames must be positive, got {T}")
        return T

    def _entry_list(self, entry: dict, key: str, ctx: str) -> list:
        """An optional list field of an entry (``relations``); empty when absent or null."""
        v = entry.get(key) or []
        expect(isinstance(v, list), self._index_path, f"{ctx}: {key!r} must be a list")
        return v

    def _predicate(self, v: Any, rctx: str) -> str:
        """A relation's predicate, given by name or as an index into the predicate list."""
        if isinstance(v, str):
            return v
        idx = as_int(v, self._index_path, f"{rctx} predicate")
        n = len(self._predicate_vocab)
        expect(0 <= idx < n, self._index_path, f"{rctx}: predicate index {idx} outside predicate_classes (size {n})")
        return self._predicate_vocab[idx]


class ImageReader(IndexedReader):
    """A dataset of single RGB images: each id is a one-frame, depth-less video."""

    has_depth = False
    item_name = "image"

    def num_frames(self, video_id: str) -> int:
        self._entry(video_id)
        return 1

    def _image_video(self, video_id: str, path: Path, size: tuple[int, int], source: str) -> Video4D:
        """The image at ``path`` as a one-frame video; ``size`` ``(H, W)`` is what ``source`` says it is."""
        img = load_rgb(path)  # [H, W, 3]
        H, W = size
        expect(img.shape[:2] == (H, W), path, f"image is {img.shape[0]}x{img.shape[1]}, {source} says {H}x{W}")
        return Video4D(rgb=img[None], depth=None, fps=1.0, video_id=video_id).validate(path)

