"""The reader interface every dataset format implements.

Readers are lazy: opening one reads only the annotation index; frames and
masks are read a video at a time (PSG4D-HOI is 891K frames).
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar, Iterator

from psg4d.data.schema import Sample, SceneGraph4D, Video4D
from psg4d.errors import DataError


class DatasetReader(abc.ABC):
    """Base class. Subclasses set ``format_name`` and ``marker`` (the annotation
    file, relative to the root, whose presence identifies the format)."""

    format_name: ClassVar[str]
    marker: ClassVar[str]
    has_depth: ClassVar[bool] = True

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- index
    @property
    @abc.abstractmethod
    def splits(self) -> list[str]:
        """Split names, e.g. ``["train", "val"]``."""

    @abc.abstractmethod
    def video_ids(self, split: str | None = None) -> list[str]:
        """Video ids of ``split`` (all videos when ``None``)."""

    @property
    @abc.abstractmethod
    def object_vocab(self) -> list[str]: ...

    @property
    @abc.abstractmethod
    def predicate_vocab(self) -> list[str]: ...

    # -- per video
    @abc.abstractmethod
    def read_graph(self, video_id: str) -> SceneGraph4D:
        """The ground-truth scene graph (with mask tubes) of one video."""

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


class IndexedReader(DatasetReader):
    """A reader whose annotation index maps video ids to entries.

    Subclasses fill, while opening, ``_index_path`` (the index file, named in
    errors), ``_entries`` (video id -> its annotation entry, in dataset order) and
    ``_splits`` (split name -> video ids).
    """

    _index_path: Path
    _entries: dict[str, Any]
    _splits: dict[str, list[str]]
    # What an id names in messages ("video", "image").
    item_name: ClassVar[str] = "video"

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
