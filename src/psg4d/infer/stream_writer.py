"""Writing a stitched video's scene graph (:func:`write_stitched_graph`) without holding it in memory.

The JSON is assembled piece by piece from the run's spool files (:mod:`psg4d.infer.stitching`):
each track's final RLEs are copied line by line, the frames where it is absent written as
``null``, and the source frame numbers appended last, so a very long video never becomes one
Python object. The result is one scene-graph JSON object on one line.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TextIO

from psg4d.data.schema import SCHEMA_VERSION
from psg4d.infer.stitching import StitchState, Track


def write_stitched_graph(state: StitchState, path: Path, *, video_id: str, meta: dict,
                         max_relations: int | None = None) -> int:
    """Assemble the scene-graph JSON from the per-track files without loading them whole; the
    best ``max_relations`` relations by score are written (their count is returned)."""
    assert state.hw is not None
    h, w = state.hw
    n = state.committed
    ranked = sorted(
        state.relations.items(), key=lambda kv: (-(kv[1].score if kv[1].score is not None else -math.inf), kv[0])
    )[:max_relations]
    with open(path, "w") as f:
        head = {"schema_version": SCHEMA_VERSION, "video_id": video_id, "num_frames": n, "height": h, "width": w}
        f.write(json.dumps(head)[:-1])
        f.write(', "objects": [')
        for i, tr in enumerate(state.tracks):
            if i:
                f.write(", ")
            obj = {"object_id": tr.track_id, "category": tr.category, "is_thing": tr.is_thing}
            if tr.first_frame is not None:
                obj["attributes"] = {"first_frame": tr.first_frame, "last_frame": tr.last_frame}
            f.write(json.dumps(obj)[:-1])
            f.write(f', "tube": {{"size": [{h}, {w}], "rles": [')
            _write_rles(f, tr, n)
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
        if state.object_vocab is not None:
            f.write(f', "object_vocab": {json.dumps(state.object_vocab)}')
        if state.predicate_vocab is not None:
            f.write(f', "predicate_vocab": {json.dumps(state.predicate_vocab)}')
        f.write(f', "meta": {json.dumps(meta)[:-1]}, "frame_indices": [')
        with open(state.index_file) as idx:
            for i, line in enumerate(idx):
                f.write(("," if i else "") + line.strip())
        f.write("]}}\n")
    return len(ranked)


def _write_rles(f: TextIO, tr: Track, n: int) -> None:
    """The ``n`` entries of ``tr``'s RLE list: its spooled RLEs, ``null`` on the frames between."""
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
