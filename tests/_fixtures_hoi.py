"""A PSG4D-HOI dataset laid out the way PSG4D's ``data/HOI`` code and HOI4D's tools lay it out.

Written from their documented behaviour (not copied):

* PSG4D ``data/HOI/generate_video.py`` reads ``psg4d_hoi.json`` (``data[].object``
  with ``mask_id`` / ``object_id``; relations ``[subject, object, predicate, start,
  end]``, one span per entry), ``hoi4d_id.json`` (short id -> HOI4D path) and
  ``categories.json`` (``{"<index>": name}``, class = ``mask_id % 1000``), frames
  ``HOI4D_release/<path>/align_rgb/<t:05d>.jpg`` and masks
  ``HOI4D_mask/<path>/mask/<t:05d>.npz`` under key ``array``, stored transposed;
* PSG4D's HOI README names the depth folder ``HOI4D_depth_video``; HOI4D's
  ``utils/decode.py`` extracts ``align_depth`` frames as ``%05d.png`` numbered from
  0, read unchanged as 16-bit millimetres (0 = invalid).

No ``meta`` and no split: the reader counts the frames and takes the size from the masks.
Expected areas are written out by hand from the shapes drawn below.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

# the 49-entry class list of PSG4D's pc_seg/test_hoi4d.py, indexed by mask_id % 1000
CATEGORIES = [
    "no label", "noise", "Chair", "table", "water dispenser", "ground", "void", "void", "void", "bucket",
    "garbage can", "wall", "sofa", "bag", "void", "bowl", "bottled drinks", "mug", "void", "locker",
    "express box", "kettle", "hammer", "pliers", "toy car", "laptop", "refrigerator", "safe", "stapler",
    "desk lamp", "trolley case", "Knife", "cupboard", "bed", "bedside table", "Door", "window", "mural",
    "counter", "curtain", "pool", "Pillow", "carpet", "television", "ceiling", "other furniture",
    "other objects", "void", "Scissors",
]
T, H, W = 5, 6, 8  # non-square: a missing transpose fails
VIDEOS = {"1": "ZY20210800001/H1/C2/N31/S92/s05/T1", "2": "ZY20210800002/H2/C9/N12/S40/s01/T2"}
OBJECTS = [{"mask_id": 2017, "object_id": 1}, {"mask_id": 1003, "object_id": 2}]  # a mug, a table
# the mug sits on the table (covering 2 of its pixels) in frames 0-1, is gone in 2, is lifted in 3-4
AREAS = {1: [4, 4, 0, 4, 4], 2: [22, 22, 24, 24, 24]}
RELATIONS = [[1, 2, "on", 0, 1], [2, 1, "carry", 2, 2], [1, 2, "on", 3, 4], [2, 1, "carry", 3, 3]]
MERGED = {(1, 2, "on"): [(0, 1), (3, 4)], (2, 1, "carry"): [(2, 3)]}


def depth_mm(t: int) -> np.ndarray:
    d = np.full((H, W), 500 + 100 * t, np.uint16)
    d[0, 0] = 0  # invalid
    return d


def _mask(t: int) -> np.ndarray:
    m = np.zeros((H, W), np.uint16)
    m[3:, :] = 1003
    if t < 2:
        m[2:4, 2:4] = 2017
    elif t > 2:
        m[0:2, 5:7] = 2017
    return m


def build_psg4d_hoi(root: Path) -> Path:
    for short, rel in VIDEOS.items():
        rgb_dir = root / "HOI4D_release" / rel / "align_rgb"
        depth_dir = root / "HOI4D_depth_video" / rel / "align_depth"
        mask_dir = root / "HOI4D_mask" / rel / "mask"
        for d in (rgb_dir, depth_dir, mask_dir):
            d.mkdir(parents=True)
        for t in range(T):
            Image.fromarray(np.full((H, W, 3), 30 * t, np.uint8)).save(rgb_dir / f"{t:05d}.jpg", quality=95)
            Image.fromarray(depth_mm(t)).save(depth_dir / f"{t:05d}.png")
            np.savez_compressed(mask_dir / f"{t:05d}.npz", array=_mask(t).T)
    (root / "categories.json").write_text(json.dumps({str(i): c for i, c in enumerate(CATEGORIES)}))
    (root / "hoi4d_id.json").write_text(json.dumps(VIDEOS))
    data = [{"video_id": rel, "object": OBJECTS, "relations": RELATIONS} for rel in VIDEOS.values()]
    (root / "psg4d_hoi.json").write_text(json.dumps({"data": data}))
    return root
