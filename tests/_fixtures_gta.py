"""A PSG4D-GTA dataset laid out the way PSG4D's ``data/GTA`` scripts lay it out.

Written from those scripts' documented behaviour (not copied):

* ``rearrange_files.py`` reads ``video_cut.json`` (``{video: [start, end]}``,
  inclusive), copies ``sailvos3d/<video>/<modality>/<old:06d>.<ext>`` for the five
  modalities to ``psg4d_gta/<modality>/<video>/<new:06d>.<ext>`` with frames
  renumbered from 0, and skips missing source files;
* ``merge_masks.py`` lists ``psg4d_gta/visible/<video>``, reads the 8-bit
  ``background_masks/<video>/<id>.bmp`` (beside ``psg4d_gta/``), adds 1000 to its
  non-zero values and writes ``psg4d_gta/masks/<video>/<id>.npy``: the thing ids of
  ``visible`` where they are non-zero, the background elsewhere;
* ``sailvos3d.json`` sits in ``psg4d_gta/`` with ``objects.thing/stuff``,
  ``split`` and per video ``object`` (``object_id`` = mask value, stuff included),
  ``relations`` as ``[subject, predicate, object, [start, end]]`` one span per
  entry, ``meta.num_frames``; it has no predicate list.

The expected per-object per-frame areas are written out by hand from the shapes
drawn below, not recomputed from the merged maps.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

VID = "ah_3b_mcs_5"
H, W = 6, 10
CUT = (10, 13)  # source frames 9..14 exist; the cut keeps 10..13 as 000000..000003
SOURCE_FRAMES = range(9, 15)
MODALITIES = {"camera": "yaml", "depth": "npy", "images": "bmp", "rage_matrices": "npz", "visible": "npy"}

# Things (visible ids): person 3 on rows 2-4, cols 1-2; car 2 on rows 0-1, cols 6-8, absent in new frame 1.
# Background values: 1 (sky) on row 0, 3 (ground) on rows 4-5. The person covers 2 ground pixels,
# the car 3 sky pixels; the ground's raw value 3 equals the person's id.
AREAS = {
    3: [6, 6, 6, 6],
    2: [6, 0, 6, 6],
    1001: [7, 10, 7, 7],
    1003: [18, 18, 18, 18],
}
OBJECTS = [
    {"object_id": 2, "category": "car"},
    {"object_id": 3, "category": "person"},
    {"object_id": 1001, "category": "sky"},
    {"object_id": 1003, "category": "ground"},
]
RELATIONS = [
    [3, "standing on", 1003, [0, 1]],
    [3, "talking to", 2, [2, 3]],
    [3, "standing on", 1003, [3, 3]],  # a second span of the same triplet
    [2, "on", 1003, [0, 0]],
    [2, "on", 1003, [2, 3]],
]
MERGED = {
    (3, 1003, "standing on"): [(0, 1), (3, 3)],
    (3, 2, "talking to"): [(2, 3)],
    (2, 1003, "on"): [(0, 0), (2, 3)],
}
PREDICATES = ["standing on", "talking to", "on"]  # first-seen order
THINGS = ["person", "car"]
STUFF = ["sky", "ground"]


def _visible(new_t: int, person_id: int = 3) -> np.ndarray:
    m = np.zeros((H, W), np.uint16)
    m[2:5, 1:3] = person_id
    if new_t != 1:
        m[0:2, 6:9] = 2
    return m


def _background() -> np.ndarray:
    b = np.zeros((H, W), np.uint8)
    b[0, :] = 1
    b[4:, :] = 3
    return b


def _projection(near: float = 0.5, far: float = 100.0) -> np.ndarray:
    return np.array(
        [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -(far + near) / (far - near), -1], [0, 0, -2 * far * near / (far - near), 0]]
    )


def _write_source(work: Path, person_id: int = 3) -> None:
    """The SAIL-VOS 3D side: per-video modality folders in source numbering, the
    cut file and the background masks (named by the renumbered frame)."""
    for old in SOURCE_FRAMES:
        new = old - CUT[0]
        base = work / "sailvos3d" / VID
        for sub in MODALITIES:
            (base / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((H, W, 3), 20 * (old - 8), np.uint8)).save(base / "images" / f"{old:06d}.bmp")
        np.save(base / "depth" / f"{old:06d}.npy", np.full((H, W), 0.01 * old, np.float32))
        np.save(base / "visible" / f"{old:06d}.npy", _visible(new, person_id))
        np.savez(base / "rage_matrices" / f"{old:06d}.npz", P_inv=np.linalg.inv(_projection()))
        if old != 11:  # a gap: rearrange_files.py skips missing files
            (base / "camera" / f"{old:06d}.yaml").write_text("K: [[1, 0, 0], [0, 1, 0], [0, 0, 1]]\n")
        if CUT[0] <= old <= CUT[1]:
            bg_dir = work / "background_masks" / VID
            bg_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_background()).save(bg_dir / f"{new:06d}.bmp")
    (work / "video_cut.json").write_text(json.dumps({VID: list(CUT)}))


def _rearrange(work: Path, out: Path) -> None:
    cut = json.loads((work / "video_cut.json").read_text())
    for vid, (a, b) in cut.items():
        for new, old in enumerate(range(a, b + 1)):
            for sub, ext in MODALITIES.items():
                src = work / "sailvos3d" / vid / sub / f"{old:06d}.{ext}"
                dst = out / sub / vid / f"{new:06d}.{ext}"
                dst.parent.mkdir(parents=True, exist_ok=True)
                if src.exists():
                    shutil.copy(src, dst)


def _merge_masks(work: Path, out: Path) -> None:
    for vid in json.loads((work / "video_cut.json").read_text()):
        for vis_path in sorted((out / "visible" / vid).iterdir()):
            with Image.open(work / "background_masks" / vid / f"{vis_path.stem}.bmp") as im:
                bg = np.array(im, dtype=np.uint16)
            bg[bg != 0] += 1000
            fg = np.load(vis_path)
            merged = fg.copy()
            merged[fg == 0] = bg[fg == 0]
            (out / "masks" / vid).mkdir(parents=True, exist_ok=True)
            np.save(out / "masks" / vid / f"{vis_path.stem}.npy", merged)


def build_psg4d_gta(work: Path, *, person_id: int = 3) -> Path:
    """Build the source side under ``work`` and return the dataset root ``work/psg4d_gta``.

    ``person_id`` is the person's id in ``visible`` (and so in ``masks`` and the annotation);
    one of 1000 or more lands in the range ``merge_masks.py`` gives stuff (1003 is the ground's
    value too)."""
    out = work / "psg4d_gta"
    _write_source(work, person_id)
    _rearrange(work, out)
    _merge_masks(work, out)
    n = CUT[1] - CUT[0] + 1

    def renumber(i: int) -> int:
        return person_id if i == 3 else i

    objects = [dict(o, object_id=renumber(o["object_id"])) for o in OBJECTS]
    relations = [[renumber(s), p, renumber(o), span] for s, p, o, span in RELATIONS]
    index = {
        "objects": {"thing": THINGS, "stuff": STUFF},
        "split": {"train": [VID], "val": []},
        "data": [{"video_id": VID, "meta": {"num_frames": n}, "object": objects, "relations": relations}],
    }
    (out / "sailvos3d.json").write_text(json.dumps(index))
    return out
