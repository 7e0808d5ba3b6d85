"""Where ground truth comes from: a scene-graph file or a dataset folder (any supported format)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Iterable

from psg4d.data.schema import SceneGraph4D, iter_scene_graphs
from psg4d.errors import ConfigError


def load_ground_truth(
    gt: Path, split: str | None, *, split_is_for_gt: bool, limit: int | None = None
) -> tuple[Iterable[SceneGraph4D], dict]:
    """GT graphs from a scene-graph file or a dataset folder, and vocabulary options for the metric."""
    if not gt.exists():
        raise ConfigError(f"{gt}: ground truth not found")
    if not gt.is_dir():
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
