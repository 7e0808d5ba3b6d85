"""The chain experiment's scoring helpers (psg4d.experiments.chain_scoring) on hand-made graphs:
which predicted object each ground-truth object is matched to, and how many attribute fields the
frames' reading got right."""

from __future__ import annotations

import numpy as np

from psg4d.data.schema import MaskTube, ObjectTrack, SceneGraph4D
from psg4d.experiments.chain_scoring import attributes_read_right, matched_objects


def _tube(x0: int, x1: int) -> MaskTube:
    m = np.zeros((2, 8, 8), dtype=bool)
    m[:, 2:6, x0:x1] = True
    return MaskTube.from_dense(m)


def _graph(objects: list[ObjectTrack]) -> SceneGraph4D:
    return SceneGraph4D(video_id="v", num_frames=2, height=8, width=8, objects=objects, relations=[])


def test_matching_and_attribute_accuracy_by_hand():
    gt = _graph([
        ObjectTrack(1, "apple", tube=_tube(0, 4), attributes={"description": "small red sphere"}),
        ObjectTrack(2, "book", tube=_tube(4, 8), attributes={"description": "flat blue block"}),
        ObjectTrack(3, "hand", tube=_tube(0, 8), attributes={"description": "skin-coloured palm on a sleeved forearm"}),
    ])
    pred = _graph([
        # the apple's tube exactly, read as a small tan sphere: size and shape right, colour wrong
        ObjectTrack(10, "can", tube=_tube(0, 4), attributes={"read_description": "small tan sphere"}),
        # half of the book's tube (vIoU 0.5: matched), read right
        ObjectTrack(11, "book", tube=_tube(4, 6), attributes={"read_description": "flat blue block"}),
    ])
    matched = matched_objects([pred], [gt])
    # the hand's tube holds the apple's (vIoU 0.5: matched) and a quarter of it the book's (0.25: not)
    assert [(g.object_id, p.object_id) for g, p in matched] == [(1, 10), (2, 11), (3, 10)]
    got = attributes_read_right(matched)
    # the hand has no fields; two objects counted
    assert got["objects"] == 2
    assert got["colour"] == 50.0 and got["size"] == 100.0 and got["shape"] == 100.0
    assert got["pattern"] == 100.0 and got["pattern colour"] == 100.0  # no pattern, none read
    assert got["all"] == 50.0  # the book's every field
    only = attributes_read_right(matched, {"apple"})  # one group's objects (the novel ones)
    assert only["objects"] == 1 and only["colour"] == 0.0 and only["all"] == 0.0
    # an object without a reading is not counted; no objects: no percentages
    assert attributes_read_right([(gt.objects[0], ObjectTrack(12, "apple", tube=_tube(0, 4)))]) == {
        "size": None, "colour": None, "shape": None, "pattern": None, "pattern colour": None, "all": None, "objects": 0}
