"""A 2D PSG dataset laid out the way OpenPSG lays it out.

Written from OpenPSG's documented behaviour (not copied): the config's
``ann_file = './data/psg/psg.json'`` and ``coco_root = './data/coco'``; image and
panoptic names relative to the COCO root (``train2017/<coco id:012d>.jpg``,
``panoptic_train2017/<coco id:012d>.png``); panoptic PNGs colour-coded as
panopticapi's ``R + 256 G + 256² B``; ``category_id`` 0-based over
``thing_classes + stuff_classes``; relations ``[subject index, object index,
predicate index]`` into ``segments_info`` and ``predicate_classes`` (0-based in the
file), a triple sometimes listed twice and a pair sometimes with two predicates;
the split by ``test_image_ids``; string image ids; ``annotations`` (xyxy boxes)
parallel to ``segments_info``; images without relations, which ``psg.py``
drops before splitting (one in each split here).

Returns the dataset root ``data/``, the folder holding ``psg/`` and ``coco/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

THINGS = ["person", "cup"]
STUFF = ["wall", "floor"]
PREDICATES = ["over", "in front of", "holding", "standing on"]
H, W = 10, 16
# image_id -> coco id; 107903 and 107905 are in test_image_ids; 107904 and 107905 have no relations
IMAGES = {"107902": 417720, "107903": 417721, "107904": 417722, "107905": 417723}
TEST_IMAGE_IDS = ["107903", "107905"]
NO_RELATIONS = {"107904", "107905"}
# segment id, category_id, isthing, box (x0, y0, x1, y1) exclusive; ids above 255 exercise G and B
SEGMENTS = [(70000, 0, 1, (1, 2, 6, 8)), (300, 1, 1, (9, 3, 12, 5)), (65793, 3, 0, (0, 8, 16, 10))]
AREAS = {0: [30], 1: [6], 2: [32]}  # object id = index in segments_info
# the first triple listed twice; the pair (0, 1) also listed with a second predicate
RELATIONS = [[0, 1, 2], [0, 2, 3], [0, 1, 2], [0, 1, 0]]
# psg.py's test split: the distinct triples, first-seen order
TEST_TRIPLES = [(0, 1, "holding"), (0, 2, "standing on"), (0, 1, "over")]
# psg.py's train split: one predicate per pair, drawn from the pair's listings
TRAIN_CHOICES = {(0, 1): {"holding", "over"}, (0, 2): {"standing on"}}


def _id_to_rgb(ids: np.ndarray) -> np.ndarray:
    return np.stack([ids % 256, (ids // 256) % 256, (ids // 65536) % 256], axis=-1).astype(np.uint8)


def build_psg(data: Path) -> Path:
    coco = data / "coco"
    for sub in ("train2017", "panoptic_train2017"):
        (coco / sub).mkdir(parents=True)
    (data / "psg").mkdir(parents=True)
    entries = []
    for image_id, coco_id in IMAGES.items():
        ids = np.zeros((H, W), np.int64)
        for sid, _, _, (x0, y0, x1, y1) in SEGMENTS:
            ids[y0:y1, x0:x1] = sid
        Image.fromarray(_id_to_rgb(ids)).save(coco / "panoptic_train2017" / f"{coco_id:012d}.png")
        Image.fromarray(np.full((H, W, 3), 77, np.uint8)).save(coco / "train2017" / f"{coco_id:012d}.jpg", quality=95)
        segs = [
            {"id": sid, "category_id": cid, "iscrowd": 0, "isthing": th, "area": (x1 - x0) * (y1 - y0)}
            for sid, cid, th, (x0, y0, x1, y1) in SEGMENTS
        ]
        anns = [{"bbox": [float(v) for v in box], "bbox_mode": 0, "category_id": cid} for _, cid, _, box in SEGMENTS]
        entries.append({
            "file_name": f"train2017/{coco_id:012d}.jpg", "height": H, "width": W, "image_id": image_id,
            "pan_seg_file_name": f"panoptic_train2017/{coco_id:012d}.png", "segments_info": segs,
            "relations": [] if image_id in NO_RELATIONS else RELATIONS, "annotations": anns,
            "coco_image_id": str(coco_id),
        })
    index = {"data": entries, "thing_classes": THINGS, "stuff_classes": STUFF, "predicate_classes": PREDICATES,
             "test_image_ids": TEST_IMAGE_IDS}
    (data / "psg" / "psg.json").write_text(json.dumps(index))
    return data
