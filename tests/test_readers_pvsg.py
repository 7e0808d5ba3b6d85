"""PVSG reader: source folders from the split index, multi-span relations, RGB only, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import _fixtures_pvsg as pub
from psg4d.data.inspect import format_inspection, inspect_dataset
from psg4d.data.readers.pvsg import PVSGReader
from psg4d.errors import DataError

T, H, W = 4, 8, 12


def make_pvsg(root, *, relations=None):
    index = {
        "objects": {"thing": ["adult", "cup"], "stuff": ["floor"]},
        "relations": ["holding", "on", "looking at"],
        "split": {"vidor": {"train": ["0001_4164158586"], "val": []}, "ego4d": {"train": [], "val": ["ego_v1"]}},
        "data": [
            {
                "video_id": vid,
                "meta": {"height": H, "width": W, "fps": 5.0, "num_frames": T},
                "objects": [
                    {"object_id": 1, "category": "adult", "is_thing": True},
                    {"object_id": 2, "category": "cup", "is_thing": True},
                    {"object_id": 3, "category": "floor", "is_thing": False},
                ],
                "relations": relations if relations is not None else [
                    [1, 2, "holding", [[0, 1], [3, 3]]],
                    [2, 3, "on", [[2, 3]]],
                ],
            }
            for vid in ("0001_4164158586", "ego_v1")
        ],
    }
    (root / "pvsg.json").write_text(json.dumps(index))
    for src, vid in (("vidor", "0001_4164158586"), ("ego4d", "ego_v1")):
        (root / src / "frames" / vid).mkdir(parents=True, exist_ok=True)
        (root / src / "masks" / vid).mkdir(parents=True, exist_ok=True)
        for t in range(T):
            Image.fromarray(np.full((H, W, 3), 30 * t, np.uint8)).save(root / src / "frames" / vid / f"{t:04d}.png")
            m = np.zeros((H, W), np.uint8)
            m[6:, :] = 3
            m[1:4, 1:4] = 1
            if t < 2:
                m[1:3, 8:10] = 2
            Image.fromarray(m).save(root / src / "masks" / vid / f"{t:04d}.png")
    return index


def test_reads_multi_span_relations_and_masks(tmp_path):
    make_pvsg(tmp_path)
    r = PVSGReader(tmp_path)
    assert r.splits == ["train", "val"]
    assert r.video_ids("train") == ["0001_4164158586"] and r.video_ids("val") == ["ego_v1"]
    assert r.object_vocab == ["adult", "cup", "floor"] and r.predicate_vocab == ["holding", "on", "looking at"]
    g = r.read_graph("ego_v1")
    assert g.meta["source"] == "ego4d"
    rels = {(x.subject_id, x.object_id, x.predicate): x.spans for x in g.relations}
    assert rels == {(1, 2, "holding"): [(0, 1), (3, 3)], (2, 3, "on"): [(2, 3)]}
    objs = g.object_by_id()
    assert objs[2].tube.present().tolist() == [True, True, False, False]
    assert objs[3].tube.areas().tolist() == [2 * W] * T and not objs[3].is_thing
    v = r.read_video("0001_4164158586")
    assert v.depth is None and not r.has_depth and v.rgb.shape == (T, H, W, 3) and v.rgb[2, 0, 0, 0] == 60


def test_light_graph_reads_no_masks(tmp_path):
    make_pvsg(tmp_path)
    for p in (tmp_path / "vidor" / "masks" / "0001_4164158586").iterdir():
        p.unlink()
    g = PVSGReader(tmp_path).read_graph("0001_4164158586", with_masks=False)
    assert len(g.objects) == 3 and all(o.tube is None for o in g.objects) and len(g.relations) == 2


def test_missing_frame_and_mask_count(tmp_path):
    make_pvsg(tmp_path)
    (tmp_path / "vidor" / "frames" / "0001_4164158586" / "0002.png").unlink()
    with pytest.raises(DataError, match=r"0002\.png.*missing frame file"):
        PVSGReader(tmp_path).read_video("0001_4164158586")
    (tmp_path / "ego4d" / "masks" / "ego_v1" / "0000.png").unlink()
    with pytest.raises(DataError, match=r"masks/ego_v1.*mask/frame count mismatch: 3 mask files, index says 4"):
        PVSGReader(tmp_path).read_graph("ego_v1")


def test_mask_shape_mismatch(tmp_path):
    make_pvsg(tmp_path)
    Image.fromarray(np.zeros((W, H), np.uint8)).save(tmp_path / "ego4d" / "masks" / "ego_v1" / "0001.png")
    with pytest.raises(DataError, match=r"0001\.png.*mask shape mismatch"):
        PVSGReader(tmp_path).read_graph("ego_v1")


def test_bad_relations(tmp_path):
    make_pvsg(tmp_path, relations=[[1, 9, "on", [[0, 1]]]])
    with pytest.raises(DataError, match=r"pvsg\.json.*object id 9"):
        PVSGReader(tmp_path).read_graph("ego_v1")
    make_pvsg(tmp_path, relations=[[1, 2, "on", [[0, 1], [3, 4]]]])
    with pytest.raises(DataError, match=r"pvsg\.json.*span \[3, 4\] outside"):
        PVSGReader(tmp_path).read_graph("ego_v1")
    make_pvsg(tmp_path, relations=[[1, 2, "on", [0, 1]]])
    with pytest.raises(DataError, match=r"pvsg\.json.*span must be \[start, end\]"):
        PVSGReader(tmp_path).read_graph("ego_v1")


def test_malformed_json_and_unknown_split_video(tmp_path):
    index = make_pvsg(tmp_path)
    index["split"]["vidor"]["val"] = ["ghost"]
    (tmp_path / "pvsg.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match=r"pvsg\.json.*unknown video 'ghost'"):
        PVSGReader(tmp_path)
    (tmp_path / "pvsg.json").write_text('{"objects": ')
    with pytest.raises(DataError, match=r"pvsg\.json.*malformed JSON"):
        PVSGReader(tmp_path)


# -- the layout of OpenPVSG's code and notebook (tests/_fixtures_pvsg.py)


def test_public_layout_areas_and_merged_relations(tmp_path):
    pub.build_pvsg(tmp_path)
    r = PVSGReader(tmp_path)
    assert r.video_ids("train") == [pub.VIDOR, pub.EGO] and r.video_ids("val") == [pub.EPIC]
    for vid, (T, H, W) in pub.SIZES.items():
        g = r.read_graph(vid)
        assert (g.num_frames, g.height, g.width) == (T, H, W) and g.meta["source"] == pub.SOURCE[vid]
        assert {o.object_id: o.tube.areas().tolist() for o in g.objects} == pub.AREAS[vid], vid
        assert {(x.subject_id, x.object_id, x.predicate): x.spans for x in g.relations} == pub.MERGED[vid], vid
    assert r.read_video(pub.EPIC).rgb[:, 0, 0, 0].tolist() == [0, 20, 40, 60]


def test_unknown_predicate_is_dropped_counted_and_reported(tmp_path):
    pub.build_pvsg(tmp_path)
    r = PVSGReader(tmp_path)
    g = r.read_graph(pub.VIDOR, with_masks=False)
    assert "leaning on" not in {x.predicate for x in g.relations}
    assert g.meta["relations_dropped_unknown_predicate"] == 1
    s = inspect_dataset(r)
    assert s["splits"]["train"]["dropped_relations"] == {"unknown_predicate": 1}
    assert s["splits"]["val"]["dropped_relations"] == {} and s["all"]["relations"] == 5
    assert "relations dropped as the dataset's own loader drops them: 1 (unknown predicate)" in format_inspection(s)


# -- object_id == position + 1 (OpenPVSG's loading.py: objects_info[instance_id - 1])


@pytest.mark.parametrize(
    ("vid", "ids", "problem"),
    [
        # swapped: masks and relations agree with the ids, but OpenPVSG would give the adult's pixels the cup's class
        (pub.EPIC, [2, 1], r"objects\[0\]: object at position 0 has object_id 2; .*objects\[object_id - 1\], so it must be 1"),
        (pub.EGO, [1, 3], r"objects\[1\]: object at position 1 has object_id 3; .*so it must be 2"),  # a gap
        (pub.EPIC, [0, 1], r"objects\[0\]: object_id must be positive"),  # 0-based
    ],
)
def test_object_id_must_be_position_plus_one(tmp_path, vid, ids, problem):
    pub.build_pvsg(tmp_path, object_ids={vid: ids})
    r = PVSGReader(tmp_path)
    for with_masks in (True, False):
        with pytest.raises(DataError, match=rf"pvsg\.json.*video '{vid}': {problem}"):
            r.read_graph(vid, with_masks=with_masks)
    # the other videos of the same file follow the rule and still read
    g = r.read_graph(pub.VIDOR)
    assert {o.object_id: o.tube.areas().tolist() for o in g.objects} == pub.AREAS[pub.VIDOR]
