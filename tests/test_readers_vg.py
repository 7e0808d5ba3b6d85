"""Visual Genome reader: box masks, names/name, objects only in relationships, sizes, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from psg4d.data.readers.vg import VGReader
from psg4d.errors import DataError

H, W = 20, 30


def make_vg(root, *, image_data=True):
    objects = [{"image_id": 1, "objects": [
        {"object_id": 10, "x": 2, "y": 3, "w": 5, "h": 4, "names": ["Man "], "synsets": ["man.n.01"]},
        {"object_id": 11, "x": 25, "y": 15, "w": 10, "h": 10, "names": ["shirt"]},  # clipped at the border
    ]}]
    rels = [{"image_id": 1, "relationships": [
        {"relationship_id": 1, "predicate": "WEARING", "subject": {"object_id": 10, "x": 2, "y": 3, "w": 5, "h": 4, "name": "man"},
         "object": {"object_id": 11, "x": 25, "y": 15, "w": 10, "h": 10, "names": ["shirt"]}},
        {"relationship_id": 2, "predicate": "on", "subject": {"object_id": 12, "x": 0, "y": 0, "w": 3, "h": 2, "name": "Hat"},
         "object": {"object_id": 10, "x": 2, "y": 3, "w": 5, "h": 4, "names": ["man"]}},
    ]}]
    (root / "objects.json").write_text(json.dumps(objects))
    (root / "relationships.json").write_text(json.dumps(rels))
    if image_data:
        (root / "image_data.json").write_text(json.dumps([{"image_id": 1, "width": W, "height": H, "url": ""}]))
    (root / "images").mkdir(exist_ok=True)
    Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(root / "images" / "1.jpg")


def test_box_masks_and_names(tmp_path):
    make_vg(tmp_path)
    r = VGReader(tmp_path)
    assert r.splits == ["all"] and r.video_ids() == ["1"]
    assert r.object_vocab == ["hat", "man", "shirt"] and r.predicate_vocab == ["on", "wearing"]
    g = r.read_graph("1")
    assert (g.num_frames, g.height, g.width) == (1, H, W)
    objs = g.object_by_id()
    assert sorted(objs) == [10, 11, 12]  # 12 appears only in relationships.json
    man = objs[10].tube.frame(0)
    assert man.sum() == 20 and man[3:7, 2:7].all()
    assert objs[11].tube.frame(0).sum() == 5 * 5  # box clipped to the image
    assert objs[12].category == "hat"
    assert {(x.subject_id, x.object_id, x.predicate) for x in g.relations} == {(10, 11, "wearing"), (12, 10, "on")}
    assert all(x.spans == [(0, 0)] for x in g.relations)
    v = r.read_video("1")
    assert v.rgb.shape == (1, H, W, 3) and v.depth is None


def test_size_from_image_header(tmp_path):
    make_vg(tmp_path, image_data=False)
    g = VGReader(tmp_path).read_graph("1")
    assert (g.height, g.width) == (H, W)


def test_missing_image_and_bad_json(tmp_path):
    make_vg(tmp_path, image_data=False)
    (tmp_path / "images" / "1.jpg").unlink()
    with pytest.raises(DataError, match=r"1\.jpg.*missing frame file"):
        VGReader(tmp_path).read_graph("1")
    (tmp_path / "objects.json").write_text("[{")
    with pytest.raises(DataError, match=r"objects\.json.*malformed JSON"):
        VGReader(tmp_path)


def test_nameless_object(tmp_path):
    make_vg(tmp_path)
    rels = json.loads((tmp_path / "relationships.json").read_text())
    del rels[0]["relationships"][1]["subject"]["name"]
    (tmp_path / "relationships.json").write_text(json.dumps(rels))
    with pytest.raises(DataError, match=r"relationships\.json.*object 12 has no 'names' or 'name'"):
        VGReader(tmp_path)
