"""OpenPSG (2D) reader and writer: RGB-encoded segment ids, index relations, bad input."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

import _fixtures_psg as pub
from psg4d.data.readers import detect_format, open_dataset
from psg4d.data.readers.psg2d import PSGReader, id_to_rgb, rgb_to_id, write_psg_image, write_psg_index
from psg4d.data.schema import MaskTube, ObjectTrack, Relation, Sample, SceneGraph4D, Video4D
from psg4d.errors import DataError

THINGS = ["person", "cup"]
STUFF = ["wall", "floor"]
PREDS = ["holding", "on", "beside"]
H, W = 10, 16


def make_image(vid: str = "img") -> Sample:
    yy, xx = np.mgrid[0:H, 0:W]
    rgb = np.stack([yy * 20, xx * 12, 100 + 0 * xx], axis=-1).astype(np.uint8)[None]
    m = {k: np.zeros((1, H, W), bool) for k in ("p", "c", "w")}
    m["p"][0, 2:8, 1:6] = True
    m["c"][0, 3:5, 9:12] = True
    m["w"][0, :2, :] = True
    objs = [
        ObjectTrack(object_id=11, category="person", tube=MaskTube.from_dense(m["p"])),
        ObjectTrack(object_id=4, category="cup", tube=MaskTube.from_dense(m["c"])),
        ObjectTrack(object_id=20, category="wall", is_thing=False, tube=MaskTube.from_dense(m["w"])),
    ]
    rels = [Relation(11, 4, "holding", [(0, 0)]), Relation(4, 20, "beside", [(0, 0)])]
    g = SceneGraph4D(video_id=vid, num_frames=1, height=H, width=W, objects=objs, relations=rels)
    return Sample(video=Video4D(rgb=rgb, video_id=vid), graph=g)


def write(root, n=2):
    entries = [
        write_psg_image(root, make_image(f"i{i}"), image_id=100 + i, thing_classes=THINGS, stuff_classes=STUFF,
                        predicate_classes=PREDS)
        for i in range(n)
    ]
    write_psg_index(root, entries, thing_classes=THINGS, stuff_classes=STUFF, predicate_classes=PREDS,
                    splits={"train": [100], "test": [101]})
    return entries


def test_rgb_id_codec():
    ids = np.array([[0, 1, 255, 256], [65535, 65536, 1 + 256 * 3 + 65536 * 7, 16777215]])
    np.testing.assert_array_equal(rgb_to_id(id_to_rgb(ids)), ids)
    assert rgb_to_id(np.array([[[1, 3, 7]]], np.uint8))[0, 0] == 1 + 3 * 256 + 7 * 65536


def test_round_trip(tmp_path):
    write(tmp_path)
    r = PSGReader(tmp_path)
    assert r.splits == ["train", "test"] and r.video_ids("test") == ["101"]
    assert r.object_vocab == THINGS + STUFF and r.predicate_vocab == PREDS
    g = r.read_graph("100")
    src = make_image().graph.object_by_id()
    assert g.num_frames == 1 and (g.height, g.width) == (H, W)
    assert sorted(g.object_by_id()) == [4, 11, 20]
    for o in g.objects:
        assert (o.category, o.is_thing) == (src[o.object_id].category, src[o.object_id].is_thing)
        np.testing.assert_array_equal(o.tube.frame(0), src[o.object_id].tube.frame(0))
    assert {(x.subject_id, x.object_id, x.predicate, tuple(x.spans)) for x in g.relations} == {
        (11, 4, "holding", ((0, 0),)), (4, 20, "beside", ((0, 0),))}
    v = r.read_video("100")
    assert v.rgb.shape == (1, H, W, 3) and v.depth is None
    assert np.abs(v.rgb.astype(int) - make_image().video.rgb.astype(int)).max() <= 8


def test_index_relations_and_test_image_ids(tmp_path):
    """Public OpenPSG shape: no object_id in segments, relations index segments_info,
    the split is test_image_ids, ids are colour-coded (here > 255 so G and B matter)."""
    seg = np.zeros((H, W), np.int64)
    seg[0:3, 0:4] = 70000
    seg[5:9, 5:9] = 300
    (tmp_path / "pan").mkdir()
    (tmp_path / "img").mkdir()
    Image.fromarray(id_to_rgb(seg)).save(tmp_path / "pan" / "a.png")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "img" / "a.jpg")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "img" / "b.jpg")
    Image.fromarray(id_to_rgb(seg)).save(tmp_path / "pan" / "b.png")
    base = {"height": H, "width": W, "relations": [[1, 0, 2], [1, 0, 2]],
            "segments_info": [{"id": 70000, "category_id": 3, "isthing": 0}, {"id": 300, "category_id": 0, "isthing": 1}]}
    data = [dict(base, file_name="img/a.jpg", pan_seg_file_name="pan/a.png", image_id="7"),
            dict(base, file_name="img/b.jpg", pan_seg_file_name="pan/b.png", image_id="8")]
    (tmp_path / "psg.json").write_text(json.dumps({"data": data, "thing_classes": THINGS, "stuff_classes": STUFF,
                                                   "predicate_classes": PREDS, "test_image_ids": ["8"]}))
    r = PSGReader(tmp_path)
    assert r.video_ids("train") == ["7"] and r.video_ids("test") == ["8"]
    g = r.read_graph("7")
    assert [(o.object_id, o.category, o.is_thing) for o in g.objects] == [(0, "floor", False), (1, "person", True)]
    assert g.objects[0].tube.frame(0).sum() == 12 and g.objects[1].tube.frame(0)[5:9, 5:9].all()
    assert [(x.subject_id, x.object_id, x.predicate) for x in g.relations] == [(1, 0, "beside")]


def _edit(root, fn):
    d = json.loads((root / "psg.json").read_text())
    fn(d)
    (root / "psg.json").write_text(json.dumps(d))


def test_bad_relation_index(tmp_path):
    write(tmp_path)
    _edit(tmp_path, lambda d: d["data"][0]["relations"].append([0, 5, 0]))
    with pytest.raises(DataError, match=r"psg\.json.*unknown object segment index 5"):
        PSGReader(tmp_path).read_graph("100")


def test_missing_image_and_bad_png(tmp_path):
    entries = write(tmp_path)
    (tmp_path / entries[0]["file_name"]).unlink()
    with pytest.raises(DataError, match=r"000000000100\.jpg.*missing frame"):
        PSGReader(tmp_path).read_video("100")
    Image.fromarray(np.zeros((H + 1, W, 3), np.uint8)).save(tmp_path / entries[1]["pan_seg_file_name"])
    with pytest.raises(DataError, match=r"000000000101\.png.*mask shape mismatch"):
        PSGReader(tmp_path).read_graph("101")


def test_malformed_and_missing_fields(tmp_path):
    write(tmp_path)
    _edit(tmp_path, lambda d: d.pop("predicate_classes"))
    with pytest.raises(DataError, match=r"psg\.json.*predicate_classes"):
        PSGReader(tmp_path)
    (tmp_path / "psg.json").write_text("{not json")
    with pytest.raises(DataError, match=r"psg\.json.*malformed JSON"):
        PSGReader(tmp_path)


def test_writer_refuses_multi_frame_and_unknown_predicate(tmp_path):
    s = make_image()
    s.graph.relations[0].predicate = "flying"
    with pytest.raises(DataError, match="flying"):
        write_psg_image(tmp_path, s, image_id=1, thing_classes=THINGS, stuff_classes=STUFF, predicate_classes=PREDS)
    s = make_image()
    s.video = Video4D(rgb=np.zeros((2, H, W, 3), np.uint8))
    with pytest.raises(DataError, match="single-frame"):
        write_psg_image(tmp_path, s, image_id=1, thing_classes=THINGS, stuff_classes=STUFF, predicate_classes=PREDS)


# -- OpenPSG's layout: data/psg/psg.json beside data/coco (tests/_fixtures_psg.py)


def test_public_layout_is_detected_at_the_data_root(tmp_path):
    root = pub.build_psg(tmp_path / "data")
    assert detect_format(root) == "psg"
    r = open_dataset(root)
    assert isinstance(r, PSGReader) and r.video_ids("train") == ["107902"] and r.video_ids("test") == ["107903"]
    g = r.read_graph("107902")
    assert {o.object_id: o.tube.areas().tolist() for o in g.objects} == pub.AREAS
    assert [(o.category, o.is_thing) for o in g.objects] == [("person", True), ("cup", True), ("floor", False)]
    assert all(x.spans == [(0, 0)] for x in g.relations)
    v = r.read_video("107903")
    assert v.rgb.shape == (1, pub.H, pub.W, 3) and abs(int(v.rgb[0, 5, 5, 0]) - 77) <= 2


# -- what OpenPSG's psg.py yields per split: images without relations dropped, per-split de-duplication


def test_openpsg_drops_images_without_relations_and_logs_it(tmp_path, caplog):
    root = pub.build_psg(tmp_path / "data")
    with caplog.at_level(logging.INFO, logger="psg4d.data.readers.psg2d"):
        r = PSGReader(root)
    # psg.py:81-83 filters them out before the train/test split
    assert r.video_ids("train") == ["107902"] and r.video_ids("test") == ["107903"]
    assert sorted(r.video_ids()) == sorted(pub.IMAGES)  # still readable by id
    assert r.read_graph("107904").relations == [] and len(r.read_graph("107905", with_masks=False).objects) == 3
    lines = [x.getMessage() for x in caplog.records]
    assert any("split 'train': 1 of 2 images have no relations and are left out" in m
               and "2 relations kept: 1 repeated triplet listings merged and 1 predicates dropped" in m for m in lines)
    assert any("split 'test': 1 of 2 images have no relations and are left out" in m
               and "3 relations kept: 1 repeated triplet listings merged" in m for m in lines)


def test_openpsg_test_split_keeps_each_distinct_triplet_once(tmp_path):
    r = PSGReader(pub.build_psg(tmp_path / "data"))
    g = r.read_graph("107903")
    assert [(x.subject_id, x.object_id, x.predicate) for x in g.relations] == pub.TEST_TRIPLES
    assert all(x.spans == [(0, 0)] for x in g.relations)


def test_openpsg_train_split_keeps_one_predicate_per_pair(tmp_path):
    root = pub.build_psg(tmp_path / "data")
    g = PSGReader(root).read_graph("107902")
    pairs = [(x.subject_id, x.object_id) for x in g.relations]
    assert pairs == list(pub.TRAIN_CHOICES)  # one relation per pair, first-seen order
    assert all(x.predicate in pub.TRAIN_CHOICES[(x.subject_id, x.object_id)] for x in g.relations)
    # the draw is fixed per image: another reader (another process, rank, epoch) reads the same graph
    again = PSGReader(root).read_graph("107902", with_masks=False)
    assert [(x.subject_id, x.object_id, x.predicate) for x in again.relations] == [
        (x.subject_id, x.object_id, x.predicate) for x in g.relations]


def test_openpsg_train_draw_follows_the_listings(tmp_path):
    """psg.py draws with np.random.choice over the pair's listings: a predicate listed twice of
    three times is kept in about 2/3 of the images, and the other one in the rest."""
    n = 300
    seg = [{"id": 1, "category_id": 0, "isthing": 1}, {"id": 2, "category_id": 1, "isthing": 1}]
    data = [{"file_name": f"{i}.jpg", "height": H, "width": W, "image_id": str(1000 + i), "pan_seg_file_name": "x.png",
             "segments_info": seg, "relations": [[0, 1, 0], [0, 1, 0], [0, 1, 2]]} for i in range(n)]
    (tmp_path / "psg.json").write_text(json.dumps({"data": data, "thing_classes": THINGS, "stuff_classes": STUFF,
                                                   "predicate_classes": PREDS, "test_image_ids": []}))
    r = PSGReader(tmp_path)
    assert len(r.video_ids("train")) == n and r.video_ids("test") == []
    kept = [r.read_graph(v, with_masks=False).relations for v in r.video_ids("train")]
    assert all(len(rels) == 1 for rels in kept)
    share = sum(rels[0].predicate == "holding" for rels in kept) / n
    assert {rels[0].predicate for rels in kept} == {"holding", "beside"} and 0.58 < share < 0.76


def test_explicit_splits_are_taken_as_listed(tmp_path):
    """psg4d's own ``splits`` (the synthetic 2D data): no image is dropped and no predicate drawn."""
    s_empty, s_two = make_image("empty"), make_image("two")
    s_empty.graph.relations = []
    s_two.graph.relations.append(Relation(11, 4, "on", [(0, 0)]))
    entries = [write_psg_image(tmp_path, s, image_id=200 + i, thing_classes=THINGS, stuff_classes=STUFF,
                               predicate_classes=PREDS) for i, s in enumerate((s_empty, s_two))]
    write_psg_index(tmp_path, entries, thing_classes=THINGS, stuff_classes=STUFF, predicate_classes=PREDS,
                    splits={"train": [200, 201]})
    r = PSGReader(tmp_path)
    assert r.video_ids("train") == ["200", "201"]
    assert {(x.subject_id, x.object_id, x.predicate) for x in r.read_graph("201").relations} == {
        (11, 4, "holding"), (4, 20, "beside"), (11, 4, "on")}
