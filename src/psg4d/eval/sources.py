"""Where ground truth comes from: a scene-graph file or a dataset folder (any supported format).

``psg4d eval --gt`` reads a split of it (:func:`load_ground_truth`), ``psg4d viz --gt`` the graph of
one video (:func:`ground_truth_for_video`); both accept the same paths.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any, Iterable

from psg4d.data.schema import SceneGraph4D, iter_scene_graphs
from psg4d.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: video ids named in a "no such video" error
_MAX_IDS = 10


def _is_dataset_folder(gt: Path) -> bool:
    """Whether ``gt`` is a dataset folder (else a scene-graph file); ConfigError when it is neither."""
    if not gt.exists():
        raise ConfigError(f"{gt}: ground truth not found")
    return gt.is_dir()


def ground_truth_for_video(gt: Path, video_id: str) -> SceneGraph4D:
    """The GT graph of ``video_id``: from a dataset folder, the video of that id in whichever split
    holds it; from a scene-graph file, the graph of that id (a file of one graph is taken as it is,
    with a warning when its id differs). DataError naming ``gt`` and the id when none matches."""
    if not _is_dataset_folder(gt):
        graphs = list(iter_scene_graphs(gt))
        if not graphs:
            raise DataError(gt, "no scene graphs in the ground-truth file")
        if len(graphs) == 1:
            if graphs[0].video_id != video_id:
                log.warning("%s: ground truth is for video %r, prediction for %r", gt, graphs[0].video_id, video_id)
            return graphs[0]
        ids = [g.video_id for g in graphs]
        if video_id not in ids:
            raise DataError(gt, f"no ground truth for video {video_id!r} in this file ({_some(ids)})")
        return graphs[ids.index(video_id)]
    from psg4d.data.readers import open_dataset

    reader = open_dataset(gt)
    for split in reader.splits:
        if video_id in reader.video_ids(split):
            return reader.read_graph(video_id)
    raise DataError(
        gt, f"no video {video_id!r} in this dataset (splits {', '.join(reader.splits)}; {_some(reader.video_ids())})"
    )


def _some(ids: list[str]) -> str:
    more = ", ..." if len(ids) > _MAX_IDS else ""
    return f"{len(ids)} videos: " + ", ".join(repr(i) for i in ids[:_MAX_IDS]) + more


def load_ground_truth(
    gt: Path, split: str | None, *, split_is_for_gt: bool, limit: int | None = None
) -> tuple[Iterable[SceneGraph4D], dict]:
    """GT graphs from a scene-graph file or a dataset folder, and vocabulary options for the metric."""
    if not _is_dataset_folder(gt):
        if split is not None and split_is_for_gt:
            raise ConfigError(f"--split selects a split of a dataset folder, but --gt {gt} is a scene-graph file")
        graphs = iter_scene_graphs(gt)
        return (graphs if limit is None else itertools.islice(graphs, limit)), {}
    from psg4d.data.readers import open_dataset

    reader = open_dataset(gt)
    splits = list(reader.splits)
    if split is None:
        if len(splits) != 1:
            raise ConfigError(f"{gt}: give --split, one of {', '.join(splits)}")
        split = splits[0]
    if split not in splits:
        raise ConfigError(f"{gt}: no split {split!r}; the dataset has {', '.join(splits)}")
    options: dict[str, Any] = {}
    # the dataset's vocabularies fix the predicate list and tell which predicted labels are unmapped
    if reader.predicate_vocab:
        options["predicates"] = list(reader.predicate_vocab)
    if reader.object_vocab:
        options["objects"] = list(reader.object_vocab)
    graphs = reader.iter_graphs(split)
    return (graphs if limit is None else itertools.islice(graphs, limit)), options
