"""A PVSG dataset laid out the way OpenPVSG's code and notebook lay it out.

Written from their documented behaviour (not copied):

* ``pvsg.json`` has ``objects.thing/stuff``, ``relations`` (the predicate list),
  ``split[source][train|val]`` for the sources vidor, epic_kitchen and ego4d, and
  per video ``meta``, ``objects`` (``object_id`` = position + 1, as
  ``datasets/pipelines/loading.py`` indexes them) and relations
  ``[s, o, predicate, [[a, b], ...]]`` with inclusive spans;
* frames ``<source>/frames/<video>/<t:04d>.png`` and masks
  ``<source>/masks/<video>/<t:04d>.png``, palette ('P') PNGs whose index is the
  object id (here with a non-grey palette, so reading colours gives wrong ids);
* ``utils/relation_matching.py`` drops relations whose predicate is not in
  ``relations``: "leaning on" below is such a relation.

Expected areas are written out by hand from the shapes drawn below.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

THINGS = ["adult", "child", "baby", "cup"]
STUFF = ["floor", "wall"]
PREDICATES = ["holding", "looking at", "standing on", "on"]
VIDOR, EPIC, EGO = "0000_1000000001", "P03_04", "9f1d6b0e-7c2a-4b8e-9d3f-1a2b3c4d5e6f"
SIZES = {VIDOR: (10, 8, 12), EPIC: (4, 6, 8), EGO: (3, 8, 12)}  # (T, H, W)
SOURCE = {VIDOR: "vidor", EPIC: "epic_kitchen", EGO: "ego4d"}

OBJECTS = {
    VIDOR: [("floor", False), ("wall", False), ("adult", True), ("cup", True), ("child", True)],
    EPIC: [("adult", True), ("cup", True)],
    EGO: [("adult", True), ("baby", True)],  # the baby is never on screen
}
RELATIONS = {
    VIDOR: [
        [3, 4, "holding", [[0, 2], [7, 9]]],
        [3, 5, "looking at", [[0, 1]]],
        [3, 5, "looking at", [[2, 3]]],  # the same triplet listed again: one relation
        [5, 1, "standing on", [[0, 3], [7, 9]]],
        [3, 2, "leaning on", [[0, 9]]],  # not in pvsg.json["relations"]: dropped
    ],
    EPIC: [[1, 2, "holding", [[0, 3]]]],
    EGO: [[1, 2, "looking at", [[0, 2]]]],
}
MERGED = {
    VIDOR: {
        (3, 4, "holding"): [(0, 2), (7, 9)],
        (3, 5, "looking at"): [(0, 3)],
        (5, 1, "standing on"): [(0, 3), (7, 9)],
    },
    EPIC: {(1, 2, "holding"): [(0, 3)]},
    EGO: {(1, 2, "looking at"): [(0, 2)]},
}
AREAS = {
    VIDOR: {
        1: [24] * 10,
        2: [24] * 10,
        3: [12] * 10,
        4: [4, 4, 4, 0, 0, 0, 0, 4, 4, 4],
        5: [12, 12, 12, 12, 0, 0, 0, 12, 12, 12],  # the child leaves in frames 4-6
    },
    EPIC: {1: [16] * 4, 2: [2] * 4},
    EGO: {1: [6] * 3, 2: [0] * 3},
}


def _mask(vid: str, t: int) -> np.ndarray:
    _, h, w = SIZES[vid]
    m = np.zeros((h, w), np.uint8)
    if vid == VIDOR:
        m[6:8, :] = 1
        m[0:2, :] = 2
        m[2:6, 0:3] = 3
        if t <= 2 or t >= 7:
            m[3:5, 4:6] = 4
        if not 4 <= t <= 6:
            m[2:6, 8:11] = 5
    elif vid == EPIC:
        m[0:2, :] = 1
        m[4, 3:5] = 2
    else:
        m[1:3, 2:5] = 1
    return m


def _palette() -> list[int]:
    pal = []
    for i in range(256):
        pal += [(i * 97) % 256, (255 - i * 53) % 256, (i * 151 + 40) % 256]
    return pal


def build_pvsg(root: Path, *, object_ids: dict[str, list[int]] | None = None) -> Path:
    """The dataset under ``root``. ``object_ids`` gives a video's objects other ids (one per
    position in ``OBJECTS[vid]``), its masks and relations renumbered to match: a file that is
    self-consistent but breaks OpenPVSG's ``object_id == position + 1``."""
    data = []
    for vid, (T, H, W) in SIZES.items():
        src = SOURCE[vid]
        ids = (object_ids or {}).get(vid) or [k + 1 for k in range(len(OBJECTS[vid]))]
        assert len(ids) == len(OBJECTS[vid])
        lut = np.arange(256, dtype=np.uint8)  # position + 1 -> the id written
        lut[1 : len(ids) + 1] = ids
        for kind in ("frames", "masks"):
            (root / src / kind / vid).mkdir(parents=True)
        for t in range(T):
            Image.fromarray(np.full((H, W, 3), 20 * t, np.uint8)).save(root / src / "frames" / vid / f"{t:04d}.png")
            im = Image.fromarray(lut[_mask(vid, t)], mode="P")
            im.putpalette(_palette())
            im.save(root / src / "masks" / vid / f"{t:04d}.png")
        objects = [
            {"object_id": ids[k], "category": c, "is_thing": th, "status": []} for k, (c, th) in enumerate(OBJECTS[vid])
        ]
        relations = [[ids[s - 1], ids[o - 1], p, spans] for s, o, p, spans in RELATIONS[vid]]
        meta = {"height": H, "width": W, "fps": 5, "duration": T / 5, "num_frames": T}
        data.append({"video_id": vid, "meta": meta, "objects": objects, "relations": relations,
                     "captions": [], "qa_pairs": [], "summary": ""})
    split = {
        "vidor": {"train": [VIDOR], "val": []},
        "epic_kitchen": {"train": [], "val": [EPIC]},
        "ego4d": {"train": [EGO], "val": []},
    }
    index = {"objects": {"thing": THINGS, "stuff": STUFF}, "relations": PREDICATES, "split": split, "data": data}
    (root / "pvsg.json").write_text(json.dumps(index))
    return root
