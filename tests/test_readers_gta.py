"""PSG4D-GTA reader: the layout of PSG4D's own scripts, singular ``object`` key, stuff ids = mask
values, frame numbering, depth, bad input."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
from PIL import Image

import _fixtures_gta as pub
from psg4d.cli import main
from psg4d.data.readers import open_dataset
from psg4d.data.readers.gta import GTAReader, ndc_depth_to_metres
from psg4d.errors import DataError

T, H, W = 3, 6, 10
FRAMES = ["000010", "000012", "000014"]  # SAIL-VOS numbers need not start at 0


def make_gta(root, *, mask_dir="masks", relations=None):
    index = {
        "objects": {"thing": ["person", "car"], "stuff": ["ground", "sky"]},
        "predicate_classes": ["talking to", "standing on", "driving"],
        "split": {"train": ["vid_a"], "val": []},
        "data": [
            {
                "video_id": "vid_a",
                "object": [
                    {"object_id": 1, "category": "person"},
                    {"object_id": 2, "category": "car"},
                    {"object_id": 1005, "category": "ground"},
                ],
                "relations": relations if relations is not None else [
                    [1, "standing on", 1005, [0, 1]],
                    [1, "standing on", 1005, [2, 2]],
                    [1, "driving", 2, [[0, 0], [2, 2]]],
                ],
                "meta": {"num_frames": T, "fps": 5},
            }
        ],
    }
    (root / "sailvos3d.json").write_text(json.dumps(index))
    for sub in ("images", "depth", mask_dir):
        (root / sub / "vid_a").mkdir(parents=True)
    for t, name in enumerate(FRAMES):
        Image.fromarray(np.full((H, W, 3), 40 * t, np.uint8)).save(root / "images" / "vid_a" / f"{name}.bmp")
        np.save(root / "depth" / "vid_a" / f"{name}.npy", np.full((H, W), 2.5 + t, np.float32))
        m = np.zeros((H, W), np.int32)
        m[4:, :] = 1005  # stuff "ground": background value 5 + 1000
        m[1:4, 1:3] = 1  # person
        if t != 1:
            m[0:2, 6:9] = 2  # car, absent in frame 1
        np.save(root / mask_dir / "vid_a" / f"{name}.npy", m)
    return index


def test_reads_objects_stuff_offset_and_relations(tmp_path):
    make_gta(tmp_path)
    r = GTAReader(tmp_path)
    assert r.splits == ["train", "val"] and r.video_ids("train") == ["vid_a"] and r.video_ids("val") == []
    assert r.object_vocab == ["person", "car", "ground", "sky"]
    g = r.read_graph("vid_a")
    assert (g.num_frames, g.height, g.width) == (T, H, W)
    objs = g.object_by_id()
    assert objs[1005].category == "ground" and not objs[1005].is_thing and objs[1].is_thing
    road = objs[1005].tube.to_dense()
    assert road[:, 4:, :].all() and road.sum() == T * 2 * W
    assert objs[2].tube.present().tolist() == [True, False, True]
    assert objs[1].tube.areas().tolist() == [6, 6, 6]
    rels = {(x.subject_id, x.object_id, x.predicate): x.spans for x in g.relations}
    assert rels == {(1, 1005, "standing on"): [(0, 2)], (1, 2, "driving"): [(0, 0), (2, 2)]}


def test_read_video_frame_indices_and_metric_depth(tmp_path):
    make_gta(tmp_path)
    v = GTAReader(tmp_path).read_video("vid_a")
    assert v.rgb.shape == (T, H, W, 3) and v.frame_indices.tolist() == [10, 12, 14]
    assert np.allclose(v.depth[:, 0, 0], [2.5, 3.5, 4.5])  # no rage_matrices: values are metres
    assert v.fps == 5.0


def test_rage_matrices_convert_ndc_depth(tmp_path):
    make_gta(tmp_path)
    near, far = 0.5, 100.0
    # OpenGL-style projection (row vectors: ndc = cam @ P); z_cam = -d maps to z_ndc
    P = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -(far + near) / (far - near), -1],
                  [0, 0, -2 * far * near / (far - near), 0]], dtype=np.float64)
    d_true = 7.0
    cam = np.array([0.0, 0.0, -d_true, 1.0]) @ P
    z_ndc = cam[2] / cam[3]
    stored = np.full((H, W), (z_ndc + 4e-5) * 6.0)
    out = ndc_depth_to_metres(stored, np.linalg.inv(P))
    assert np.allclose(out[H // 2, W // 2], d_true, rtol=1e-4)
    (tmp_path / "rage_matrices" / "vid_a").mkdir(parents=True)
    for name in FRAMES:
        np.save(tmp_path / "depth" / "vid_a" / f"{name}.npy", stored.astype(np.float32))
        np.savez(tmp_path / "rage_matrices" / "vid_a" / f"{name}.npz", P_inv=np.linalg.inv(P), P=P)
    v = GTAReader(tmp_path).read_video("vid_a")
    assert np.allclose(v.depth[:, H // 2, W // 2], d_true, rtol=1e-3)


def test_flat_class_list(tmp_path):
    index = make_gta(tmp_path)
    index.pop("objects")
    index["object"] = ["person", "car", "ground", "sky"]
    (tmp_path / "sailvos3d.json").write_text(json.dumps(index))
    r = GTAReader(tmp_path)
    g = r.read_graph("vid_a")
    objs = g.object_by_id()
    assert not objs[1005].is_thing and objs[1005].tube.areas().tolist() == [2 * W] * T
    assert r.object_vocab == ["person", "car", "ground", "sky"]


def _index(root):
    return json.loads((root / "sailvos3d.json").read_text())


def test_missing_frame_file(tmp_path):
    make_gta(tmp_path)
    (tmp_path / "images" / "vid_a" / "000012.bmp").unlink()
    with pytest.raises(DataError, match=r"000012\.bmp.*missing frame file"):
        GTAReader(tmp_path).read_video("vid_a")


def test_mask_frame_count_mismatch(tmp_path):
    make_gta(tmp_path)
    (tmp_path / "masks" / "vid_a" / "000014.npy").unlink()
    with pytest.raises(DataError, match=r"masks/vid_a.*mask/frame count mismatch: 2 mask files, index says 3"):
        GTAReader(tmp_path).read_graph("vid_a")


def test_mask_shape_mismatch(tmp_path):
    make_gta(tmp_path)
    np.save(tmp_path / "masks" / "vid_a" / "000012.npy", np.zeros((W, H), np.int32))
    with pytest.raises(DataError, match=r"000012\.npy.*mask shape mismatch"):
        GTAReader(tmp_path).read_graph("vid_a")


def test_malformed_json(tmp_path):
    make_gta(tmp_path)
    (tmp_path / "sailvos3d.json").write_text("{]")
    with pytest.raises(DataError, match=r"sailvos3d\.json.*malformed JSON"):
        GTAReader(tmp_path)


def test_unknown_object_and_span_outside(tmp_path):
    make_gta(tmp_path, relations=[[1, "driving", 42, [0, 1]]])
    with pytest.raises(DataError, match=r"sailvos3d\.json.*object id 42 is not an object"):
        GTAReader(tmp_path).read_graph("vid_a")
    other = tmp_path / "b"
    other.mkdir()
    make_gta(other, relations=[[1, "driving", 2, [1, 3]]])
    with pytest.raises(DataError, match=r"sailvos3d\.json.*span \[1, 3\] outside"):
        GTAReader(other).read_graph("vid_a")


def test_plural_objects_key_in_a_video_is_an_error(tmp_path):
    index = make_gta(tmp_path)
    index["data"][0]["objects"] = index["data"][0].pop("object")
    (tmp_path / "sailvos3d.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match=r"sailvos3d\.json.*missing field 'object'"):
        GTAReader(tmp_path).read_graph("vid_a")


# -- the layout PSG4D's data/GTA scripts produce (tests/_fixtures_gta.py)


def test_public_layout_opens_without_a_predicate_list(tmp_path, capsys):
    root = pub.build_psg4d_gta(tmp_path)
    r = open_dataset(root)
    assert isinstance(r, GTAReader) and r.predicate_vocab == pub.PREDICATES
    assert main(["data", "inspect", str(root)]) == 0
    assert "standing on" in capsys.readouterr().out


def test_public_layout_areas_and_merged_relations(tmp_path):
    root = pub.build_psg4d_gta(tmp_path)
    r = GTAReader(root)
    g = r.read_graph(pub.VID)
    assert (g.num_frames, g.height, g.width) == (4, pub.H, pub.W)
    objs = g.object_by_id()
    assert {oid: o.tube.areas().tolist() for oid, o in objs.items()} == pub.AREAS
    assert {oid: o.is_thing for oid, o in objs.items()} == {2: True, 3: True, 1001: False, 1003: False}
    assert {(x.subject_id, x.object_id, x.predicate): x.spans for x in g.relations} == pub.MERGED
    v = r.read_video(pub.VID)
    # the cut source frames 10..13 are renumbered 0..3
    assert v.frame_indices.tolist() == [0, 1, 2, 3] and v.rgb[:, 0, 0, 0].tolist() == [40, 60, 80, 100]
    assert v.depth.shape == (4, pub.H, pub.W) and np.isfinite(v.depth).all()


def test_thing_and_stuff_with_the_same_raw_value_never_collide(tmp_path):
    # the person is thing 3 and the ground is background value 3, stored as 1003
    objs = GTAReader(pub.build_psg4d_gta(tmp_path)).read_graph(pub.VID).object_by_id()
    person, ground = objs[3].tube.to_dense(), objs[1003].tube.to_dense()
    assert objs[3].category == "person" and objs[1003].category == "ground"
    assert person.any() and ground.any() and not (person & ground).any()
    assert person[:, 4, 1:3].all() and not ground[:, 4, 1:3].any()  # merge_masks fills only where visible is 0


def test_visible_only_warns_once_and_leaves_stuff_empty(tmp_path, caplog):
    root = pub.build_psg4d_gta(tmp_path)
    shutil.rmtree(root / "masks")
    r = GTAReader(root)
    with caplog.at_level(logging.WARNING, logger="psg4d.data.readers.gta"):
        g = r.read_graph(pub.VID)
        r.read_graph(pub.VID)
    assert len([x for x in caplog.records if "things only" in x.getMessage()]) == 1
    areas = {oid: o.tube.areas().tolist() for oid, o in g.object_by_id().items()}
    assert areas == {**pub.AREAS, 1001: [0] * 4, 1003: [0] * 4}


def test_stuff_object_id_must_be_its_mask_value(tmp_path):
    index = make_gta(tmp_path)
    index["data"][0]["object"][2]["object_id"] = 5
    (tmp_path / "sailvos3d.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match=r"sailvos3d\.json.*stuff object 'ground' has object_id 5"):
        GTAReader(tmp_path).read_graph("vid_a")


# -- object ids the panoptic map cannot hold as annotated (merge_masks.py: things 1..999, stuff 1001..1255)


@pytest.mark.parametrize("person_id", [1000, 1002, 1003])
def test_thing_id_in_the_stuff_range_is_refused(tmp_path, person_id):
    # the person's SAIL-VOS id reaches the masks unchanged, where merge_masks.py puts stuff at background + 1000
    # (1003 is also the ground's value: the map cannot tell the two apart)
    root = pub.build_psg4d_gta(tmp_path, person_id=person_id)
    r = GTAReader(root)
    msg = rf"sailvos3d\.json.*video '{pub.VID}': object\[1\]: thing object 'person' has object_id {person_id}; thing ids"
    with pytest.raises(DataError, match=msg):
        r.read_graph(pub.VID)
    with pytest.raises(DataError, match=msg):  # an index-only read refuses it too
        r.read_graph(pub.VID, with_masks=False)


def test_highest_thing_id_still_reads(tmp_path):
    g = GTAReader(pub.build_psg4d_gta(tmp_path, person_id=999)).read_graph(pub.VID)
    objs = g.object_by_id()
    assert objs[999].category == "person" and objs[999].is_thing
    assert objs[999].tube.areas().tolist() == pub.AREAS[3]
    assert (999, 1003, "standing on") in {(x.subject_id, x.object_id, x.predicate) for x in g.relations}


@pytest.mark.parametrize(
    ("position", "change", "problem"),
    [
        (0, {"object_id": 0}, "thing object 'person' has object_id 0; thing ids"),
        (2, {"object_id": 1300}, r"stuff object 'ground' has object_id 1300; .* must be in 1001\.\.1255"),
        (1, {"category": "dragon"}, "category 'dragon' \\(object_id 2\\) is in neither objects.thing nor objects.stuff"),
    ],
)
def test_object_ids_and_classes_outside_the_layout_are_refused(tmp_path, position, change, problem):
    index = make_gta(tmp_path)
    index["data"][0]["object"][position].update(change)
    (tmp_path / "sailvos3d.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match=rf"sailvos3d\.json.*video 'vid_a': object\[{position}\]: {problem}"):
        GTAReader(tmp_path).read_graph("vid_a")
