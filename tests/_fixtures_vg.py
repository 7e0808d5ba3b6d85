"""A Visual Genome v1.4 dataset laid out as the release files and their loaders describe it.

Written from their documented behaviour (not copied): ``image_data.json`` lists
``image_id, url, width, height, coco_id, flickr_id`` (ids may be null); the url
names the image's folder, ``VG_100K`` or ``VG_100K_2`` (the ``datasets`` loader's
``rak248/(VG_100K(?:_2)?)/...`` match); ``objects.json`` lists per image
``object_id, x, y, w, h, names, synsets, merged_object_ids``; the subjects and
objects embedded in ``relationships.json`` carry ``name`` (a string); the three
lists are aligned by position; a relationship may name an object missing from
the image's object list (the VG driver skips those).

Expected areas are the boxes clipped to the image, written out by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

URL = "https://cs.stanford.edu/people/rak248/{}/{}.jpg"
SIZES = {1: (20, 30), 2: (12, 16)}  # image id -> (H, W)
FOLDER = {1: "VG_100K", 2: "VG_100K_2"}
OBJECTS = {
    1: [
        {"object_id": 10, "x": 2, "y": 3, "w": 5, "h": 4, "names": ["Man "], "synsets": ["man.n.01"]},
        {"object_id": 11, "x": 25, "y": 15, "w": 10, "h": 10, "names": ["shirt"], "synsets": []},  # clipped: 5 x 5
    ],
    2: [
        {"object_id": 20, "x": 0, "y": 0, "w": 4, "h": 3, "names": ["dog"], "synsets": []},
        {"object_id": 21, "x": 4, "y": 6, "w": 8, "h": 6, "names": ["grass"], "synsets": []},
    ],
}
AREAS = {1: {10: [20], 11: [25]}, 2: {20: [12], 21: [48]}}


def _emb(oid: int, name: str) -> dict:
    return {"object_id": oid, "x": 0, "y": 0, "w": 1, "h": 1, "name": name, "synsets": [], "merged_object_ids": []}


RELATIONSHIPS = {
    1: [
        {"relationship_id": 1, "predicate": "WEARING", "synsets": [], "subject": _emb(10, "man"), "object": _emb(11, "shirt")},
        # hat 12 is in no object list of image 1: dropped, counted, no object added
        {"relationship_id": 2, "predicate": "on", "synsets": [], "subject": _emb(12, "hat"), "object": _emb(10, "man")},
        {"relationship_id": 3, "predicate": "wearing", "synsets": [], "subject": _emb(10, "man"), "object": _emb(11, "shirt")},
    ],
    2: [{"relationship_id": 4, "predicate": "on", "synsets": [], "subject": _emb(20, "dog"), "object": _emb(21, "grass")}],
}
MERGED = {1: {(10, 11, "wearing"): [(0, 0)]}, 2: {(20, 21, "on"): [(0, 0)]}}
DROPPED = {1: 1, 2: 0}


def build_vg(root: Path) -> Path:
    image_data, objects, rels = [], [], []
    for iid, (h, w) in SIZES.items():
        url = URL.format(FOLDER[iid], iid)
        image_data.append({"image_id": iid, "url": url, "width": w, "height": h, "coco_id": None, "flickr_id": None})
        objects.append({"image_id": iid, "objects": [dict(o, merged_object_ids=[]) for o in OBJECTS[iid]], "image_url": url})
        rels.append({"image_id": iid, "relationships": RELATIONSHIPS[iid]})
        (root / FOLDER[iid]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((h, w, 3), 50 * iid, np.uint8)).save(root / FOLDER[iid] / f"{iid}.jpg", quality=95)
    for name, data in (("image_data.json", image_data), ("objects.json", objects), ("relationships.json", rels)):
        (root / name).write_text(json.dumps(data))
    return root
