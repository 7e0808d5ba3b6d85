"""Files of many scene graphs: a split's ground truth, a model's predictions.

Collections are stored as JSON Lines, one :class:`SceneGraph4D` per line, so that
they can be streamed a video at a time (:func:`save_scene_graphs`,
:func:`iter_scene_graphs`); reading also accepts a JSON list, a JSON object with a
``scene_graphs`` list, or a single scene-graph JSON. :mod:`psg4d.data.schema`
re-exports these functions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

from psg4d.data.scene_graph import SceneGraph4D, read_json_file
from psg4d.errors import DataError
from psg4d.utils.io import atomic_path, json_text


def save_scene_graphs(path: str | Path, graphs: Iterable[SceneGraph4D]) -> int:
    """Write scene graphs as JSON Lines (atomically); returns how many were written."""
    n = 0
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for g in graphs:
                f.write(json_text(g.to_json(), f"{path}: video {g.video_id!r}"))
                f.write("\n")
                n += 1
    return n


def iter_scene_graphs(path: str | Path, *, validate: bool = True) -> Iterator[SceneGraph4D]:
    """Stream scene graphs from a ``.jsonl`` file (one per line), a JSON list, a
    JSON object with a ``scene_graphs`` list, or a single scene-graph JSON."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found" if not path.exists() else "not a file")
    if path.suffix == ".jsonl":
        # bytes, decoded line by line: a text-mode reader fails on a whole buffer, not on the bad line
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise DataError(path, f"line {lineno}: not UTF-8 text") from None
                if not line.strip():
                    continue
                try:
                    d = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(path, f"line {lineno}: malformed JSON: {e.msg}") from None
                g = SceneGraph4D.from_json(d, where=f"{path}:{lineno}")
                yield g.validate(f"{path}:{lineno}") if validate else g
        return
    d = read_json_file(path)
    if isinstance(d, dict) and "scene_graphs" in d:
        items = d["scene_graphs"]
    elif isinstance(d, list):
        items = d
    else:
        items = [d]
    for i, item in enumerate(items):
        g = SceneGraph4D.from_json(item, where=f"{path}[{i}]")
        yield g.validate(path) if validate else g


def load_scene_graphs(path: str | Path, *, validate: bool = True) -> dict[str, SceneGraph4D]:
    """All scene graphs of a file keyed by video id (duplicate ids are an error)."""
    out: dict[str, SceneGraph4D] = {}
    for g in iter_scene_graphs(path, validate=validate):
        if g.video_id in out:
            raise DataError(path, f"video {g.video_id!r} appears twice")
        out[g.video_id] = g
    return out
