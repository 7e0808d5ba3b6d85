"""Visual Genome reader: box masks, names/name, image folders from the url, relationships naming
unlisted objects, sizes, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import _fixtures_vg as pub
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
    (root / "VG_100K").mkdir(exist_ok=True)
    Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(root / "VG_100K" / "1.jpg")


def test_box_masks_and_names(tmp_path):
    make_vg(tmp_path)
    r = VGReader(tmp_path)
    assert r.splits == ["all"] and r.video_ids() == ["1"]
    assert r.object_vocab == ["man", "shirt"] and r.predicate_vocab == ["wearing"]
    g = r.read_graph("1")
    assert (g.num_frames, g.height, g.width) == (1, H, W)
    objs = g.object_by_id()
    assert sorted(objs) == [10, 11]  # 12 appears only in relationships.json: its relationship is dropped
    man = objs[10].tube.frame(0)
    assert man.sum() == 20 and man[3:7, 2:7].all()
    assert objs[11].tube.frame(0).sum() == 5 * 5  # box clipped to the image
    assert {(x.subject_id, x.object_id, x.predicate) for x in g.relations} == {(10, 11, "wearing")}
    assert all(x.spans == [(0, 0)] for x in g.relations)
    v = r.read_video("1")
    assert v.rgb.shape == (1, H, W, 3) and v.depth is None


def test_size_from_image_header(tmp_path):
    make_vg(tmp_path, image_data=False)
    g = VGReader(tmp_path).read_graph("1")
    assert (g.height, g.width) == (H, W)


def test_missing_image_and_bad_json(tmp_path):
    make_vg(tmp_path, image_data=False)
    (tmp_path / "VG_100K" / "1.jpg").unlink()
    with pytest.raises(DataError, match=r"1\.jpg.*missing frame file"):
        VGReader(tmp_path).read_graph("1")
    (tmp_path / "objects.json").write_text("[{")
    with pytest.raises(DataError, match=r"objects\.json.*malformed JSON"):
        VGReader(tmp_path)


def test_nameless_object(tmp_path):
    make_vg(tmp_path)
    objs = json.loads((tmp_path / "objects.json").read_text())
    del objs[0]["objects"][1]["names"]
    (tmp_path / "objects.json").write_text(json.dumps(objs))
    with pytest.raises(DataError, match=r"objects\.json.*object 11 has no 'names' or 'name'"):
        VGReader(tmp_path)


# -- the v1.4 release files (tests/_fixtures_vg.py)


def test_public_layout_folders_from_url_and_areas(tmp_path):
    pub.build_vg(tmp_path)
    r = VGReader(tmp_path)
    for iid, (h, w) in pub.SIZES.items():
        g = r.read_graph(str(iid))
        assert (g.height, g.width) == (h, w)
        assert {o.object_id: o.tube.areas().tolist() for o in g.objects} == pub.AREAS[iid]
        assert {(x.subject_id, x.object_id, x.predicate): x.spans for x in g.relations} == pub.MERGED[iid]
        v = r.read_video(str(iid))  # image 2 is in VG_100K_2, as its url says
        assert v.rgb.shape == (1, h, w, 3) and abs(int(v.rgb[0, 0, 0, 0]) - 50 * iid) <= 2


def test_relationship_with_an_unlisted_object_is_dropped_and_counted(tmp_path):
    pub.build_vg(tmp_path)
    r = VGReader(tmp_path)
    for iid, n in pub.DROPPED.items():
        g = r.read_graph(str(iid), with_masks=False)
        assert g.meta["relations_dropped_missing_object"] == n
        assert sorted(o.object_id for o in g.objects) == sorted(o["object_id"] for o in pub.OBJECTS[iid])
    assert "hat" not in r.object_vocab
