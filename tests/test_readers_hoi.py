"""PSG4D-HOI reader and writer: round trip, the transposed on-disk masks, bad input."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import _fixtures_hoi as pub
from psg4d.data.readers import open_dataset
from psg4d.data.readers.hoi import HOIReader, write_hoi_index, write_hoi_video
from psg4d.data.schema import MaskTube, ObjectTrack, Relation, Sample, SceneGraph4D, Video4D
from psg4d.errors import DataError

CATS = ["no label", "noise", "Chair", "table", "ground", "mug"]
PREDS = ["pick up", "put down", "on"]
T, H, W = 4, 12, 20  # non-square so that a missing or extra transpose fails


def make_sample(vid: str = "v0", seed: int = 0) -> Sample:
    rng = np.random.default_rng(seed)
    # smooth gradients: JPEG is lossy on pixel noise but near-exact on smooth images
    yy, xx = np.mgrid[0:H, 0:W]
    rgb = np.stack([(yy * 10 + t * 5, xx * 8, 128 + 0 * xx) for t in range(T)], axis=0)
    rgb = np.moveaxis(rgb, 1, -1).astype(np.uint8)
    depth = rng.uniform(0.3, 4.0, size=(T, H, W)).astype(np.float32)
    m_chair = np.zeros((T, H, W), bool)
    m_chair[:, 1:5, 2:9] = True
    m_mug = np.zeros((T, H, W), bool)
    m_mug[1:3, 7:11, 12:18] = True  # absent in frames 0 and 3
    m_ground = np.zeros((T, H, W), bool)
    m_ground[:, 11:, :] = True
    objs = [
        ObjectTrack(object_id=3, category="Chair", is_thing=True, tube=MaskTube.from_dense(m_chair)),
        ObjectTrack(object_id=7, category="mug", is_thing=True, tube=MaskTube.from_dense(m_mug)),
        ObjectTrack(object_id=9, category="ground", is_thing=False, tube=MaskTube.from_dense(m_ground)),
    ]
    rels = [
        Relation(subject_id=7, object_id=3, predicate="on", spans=[(0, 0), (2, 3)]),
        Relation(subject_id=3, object_id=9, predicate="pick up", spans=[(1, 2)]),
    ]
    graph = SceneGraph4D(video_id=vid, num_frames=T, height=H, width=W, objects=objs, relations=rels)
    intr = np.array([[10.0, 0, 10], [0, 10.0, 6], [0, 0, 1]])
    video = Video4D(rgb=rgb, depth=depth, intrinsics=intr, fps=15.0, video_id=vid)
    return Sample(video=video, graph=graph)


def write_dataset(root, samples, splits=None):
    entries = [
        write_hoi_video(root, s, categories=CATS, rel_path=f"ZY2021/H1/C{i}/N1/S1/s1/T1") for i, s in enumerate(samples)
    ]
    write_hoi_index(
        root, entries, categories=CATS, predicates=PREDS, splits=splits or {"train": [s.graph.video_id for s in samples]}
    )
    return entries


def test_round_trip(tmp_path):
    s = make_sample()
    write_dataset(tmp_path, [s])
    r = HOIReader(tmp_path)
    assert r.splits == ["train"] and r.video_ids("train") == ["v0"]
    assert r.object_vocab == CATS and r.predicate_vocab == PREDS
    g = r.read_graph("v0")
    assert (g.num_frames, g.height, g.width) == (T, H, W)
    src = s.graph.object_by_id()
    assert sorted(g.object_by_id()) == sorted(src)
    for o in g.objects:
        assert o.category == src[o.object_id].category
        assert o.is_thing == src[o.object_id].is_thing
        np.testing.assert_array_equal(o.tube.to_dense(), src[o.object_id].tube.to_dense())
        np.testing.assert_array_equal(o.tube.present(), src[o.object_id].tube.present())
    got = {(x.subject_id, x.object_id, x.predicate): x.spans for x in g.relations}
    assert got == {(7, 3, "on"): [(0, 0), (2, 3)], (3, 9, "pick up"): [(1, 2)]}
    v = r.read_video("v0")
    assert v.rgb.shape == (T, H, W, 3) and v.depth.dtype == np.float32
    assert np.abs(v.depth - s.video.depth).max() <= 0.0005 + 1e-6  # rounded to the millimetre
    assert np.abs(v.rgb.astype(int) - s.video.rgb.astype(int)).max() <= 8
    np.testing.assert_allclose(v.intrinsics, s.video.intrinsics)
    assert v.fps == 15.0


def test_masks_are_stored_transposed_and_mask_id_encodes_class(tmp_path):
    s = make_sample()
    entries = write_dataset(tmp_path, [s])
    rel = entries[0]["video_id"]
    arr = np.load(tmp_path / "HOI4D_mask" / rel / "mask" / "00001.npz")["array"]
    assert arr.shape == (W, H)
    mug = next(o for o in entries[0]["object"] if o["object_id"] == 7)
    assert CATS[mug["mask_id"] % 1000] == "mug"
    np.testing.assert_array_equal(arr.T == mug["mask_id"], s.graph.object_by_id()[7].tube.frame(1))
    rels = entries[0]["relations"]
    assert [7, 3, "on", 0, 0] in rels and [7, 3, "on", 2, 3] in rels  # one span per entry


def test_reads_public_style_index_with_short_ids(tmp_path):
    """A hand-made file in the public shape: short ids in hoi4d_id.json, class via mask_id % 1000,
    no meta (frame count from the folder, size from the transposed mask)."""
    rel = "ZY20210800001/H1/C1/N19/S100/s01/T1"
    (tmp_path / "HOI4D_release" / rel / "align_rgb").mkdir(parents=True)
    (tmp_path / "HOI4D_mask" / rel / "mask").mkdir(parents=True)
    from PIL import Image

    for t in range(2):
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "HOI4D_release" / rel / "align_rgb" / f"{t:05d}.jpg")
        m = np.zeros((H, W), np.int32)
        m[2:4, 15:19] = 2005  # instance 2 of class 5 (mug)
        np.savez(tmp_path / "HOI4D_mask" / rel / "mask" / f"{t:05d}.npz", array=m.T)
    (tmp_path / "categories.json").write_text(json.dumps({str(i): c for i, c in enumerate(CATS)}))
    (tmp_path / "hoi4d_id.json").write_text(json.dumps({"42": rel}))
    data = [{"video_id": rel, "object": [{"mask_id": 2005, "object_id": 1}], "relations": [[1, 1, "carry", 0, 1]]}]
    (tmp_path / "psg4d_hoi.json").write_text(json.dumps({"data": data}))
    r = HOIReader(tmp_path)
    assert r.splits == ["all"] and r.video_ids() == ["42"] and r.predicate_vocab == ["carry"]
    g = r.read_graph("42")
    assert (g.num_frames, g.height, g.width) == (2, H, W)
    assert g.objects[0].category == "mug"
    assert g.objects[0].tube.frame(0)[2:4, 15:19].all() and g.objects[0].tube.areas().tolist() == [8, 8]
    v = r.read_video("42")
    assert v.depth is None and v.num_frames == 2


def _index(root):
    return json.loads((root / "psg4d_hoi.json").read_text())


def _write_index(root, d):
    (root / "psg4d_hoi.json").write_text(json.dumps(d))


def test_missing_frame_file(tmp_path):
    entries = write_dataset(tmp_path, [make_sample()])
    p = tmp_path / "HOI4D_release" / entries[0]["video_id"] / "align_rgb" / "00002.jpg"
    p.unlink()
    with pytest.raises(DataError, match="00002.jpg.*missing frame"):
        HOIReader(tmp_path).read_video("v0")


def test_mask_frame_count_mismatch(tmp_path):
    entries = write_dataset(tmp_path, [make_sample()])
    (tmp_path / "HOI4D_mask" / entries[0]["video_id"] / "mask" / "00003.npz").unlink()
    with pytest.raises(DataError, match=r"mask.*3 mask files for 4 frames"):
        HOIReader(tmp_path).read_graph("v0")


def test_mask_shape_mismatch_untransposed(tmp_path):
    entries = write_dataset(tmp_path, [make_sample()])
    p = tmp_path / "HOI4D_mask" / entries[0]["video_id"] / "mask" / "00001.npz"
    arr = np.load(p)["array"]
    np.savez(p, array=arr.T)  # someone forgot the transpose
    with pytest.raises(DataError, match=r"00001\.npz.*mask shape mismatch"):
        HOIReader(tmp_path).read_graph("v0")


def test_malformed_json(tmp_path):
    write_dataset(tmp_path, [make_sample()])
    (tmp_path / "psg4d_hoi.json").write_text('{"data": [')
    with pytest.raises(DataError, match=r"psg4d_hoi\.json.*malformed JSON"):
        HOIReader(tmp_path)


def test_unknown_object_in_relation(tmp_path):
    write_dataset(tmp_path, [make_sample()])
    d = _index(tmp_path)
    d["data"][0]["relations"].append([7, 99, "on", 0, 1])
    _write_index(tmp_path, d)
    with pytest.raises(DataError, match=r"psg4d_hoi\.json.*object id 99"):
        HOIReader(tmp_path).read_graph("v0")


def test_span_outside_video(tmp_path):
    write_dataset(tmp_path, [make_sample()])
    d = _index(tmp_path)
    d["data"][0]["relations"].append([7, 3, "on", 2, 4])
    _write_index(tmp_path, d)
    with pytest.raises(DataError, match=r"psg4d_hoi\.json.*span \[2, 4\] outside"):
        HOIReader(tmp_path).read_graph("v0")


def test_unknown_split_video_and_unknown_video(tmp_path):
    write_dataset(tmp_path, [make_sample()])
    d = _index(tmp_path)
    d["split"]["val"] = ["nope"]
    _write_index(tmp_path, d)
    with pytest.raises(DataError, match=r"psg4d_hoi\.json.*unknown video 'nope'"):
        HOIReader(tmp_path)
    d["split"].pop("val")
    _write_index(tmp_path, d)
    with pytest.raises(DataError, match="unknown video id 'zzz'"):
        HOIReader(tmp_path).read_graph("zzz")


def test_writer_refuses_overlap_and_unknown_category(tmp_path):
    s = make_sample()
    s.graph.objects[1].tube = s.graph.objects[0].tube
    with pytest.raises(DataError, match="overlap"):
        write_hoi_video(tmp_path, s, categories=CATS)
    s = make_sample()
    s.graph.objects[0].category = "spaceship"
    with pytest.raises(DataError, match="spaceship"):
        write_hoi_video(tmp_path, s, categories=CATS)


def test_writer_refuses_escaping_path(tmp_path):
    with pytest.raises(DataError, match="inside the dataset root"):
        write_hoi_video(tmp_path, make_sample(), categories=CATS, rel_path="../evil")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    h=st.integers(3, 9), w=st.integers(3, 9), t=st.integers(1, 3), n=st.integers(1, 4), seed=st.integers(0, 2**16)
)
def test_random_label_maps_round_trip_exactly(tmp_path_factory, h, w, t, n, seed):
    """Any non-overlapping masks of any (usually non-square) size come back exactly."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n + 1, size=(t, h, w))  # 0 = background
    objs = [
        ObjectTrack(object_id=10 + k, category=CATS[2 + k % 4], tube=MaskTube.from_dense(labels == k + 1))
        for k in range(n)
    ]
    g = SceneGraph4D(video_id="p", num_frames=t, height=h, width=w, objects=objs)
    v = Video4D(rgb=np.zeros((t, h, w, 3), np.uint8), video_id="p")
    root = tmp_path_factory.mktemp("hoi")
    e = write_hoi_video(root, Sample(video=v, graph=g), categories=CATS)
    write_hoi_index(root, [e], categories=CATS, predicates=PREDS, splits={"train": ["p"]})
    back = HOIReader(root).read_graph("p").object_by_id()
    for o in objs:
        np.testing.assert_array_equal(back[o.object_id].tube.to_dense(), o.tube.to_dense())
        assert back[o.object_id].tube.present().tolist() == o.tube.present().tolist()


# -- the layout of PSG4D's HOI code and HOI4D's decoder (tests/_fixtures_hoi.py)


def test_public_layout_areas_merged_relations_and_depth(tmp_path):
    pub.build_psg4d_hoi(tmp_path)
    r = open_dataset(tmp_path)
    assert isinstance(r, HOIReader) and r.video_ids() == ["1", "2"]
    g = r.read_graph("1")
    assert (g.num_frames, g.height, g.width) == (pub.T, pub.H, pub.W)
    assert {o.object_id: o.tube.areas().tolist() for o in g.objects} == pub.AREAS
    assert {o.object_id: o.category for o in g.objects} == {1: "mug", 2: "table"}
    assert {(x.subject_id, x.object_id, x.predicate): x.spans for x in g.relations} == pub.MERGED
    v = r.read_video("1")
    # depth lives in HOI4D_depth_video/<path>/align_depth, millimetres -> metres
    assert v.depth is not None and v.depth.shape == (pub.T, pub.H, pub.W)
    np.testing.assert_array_equal(v.depth, np.stack([pub.depth_mm(t) for t in range(pub.T)]).astype(np.float32) / 1000)


def test_missing_depth_warns_once(tmp_path, caplog):
    pub.build_psg4d_hoi(tmp_path)
    shutil.rmtree(tmp_path / "HOI4D_depth_video")
    r = HOIReader(tmp_path)
    with caplog.at_level(logging.WARNING, logger="psg4d.data.readers"):
        videos = [r.read_video(v) for v in r.video_ids()]
    assert all(v.depth is None for v in videos)
    warned = [x.getMessage() for x in caplog.records if "has no depth" in x.getMessage()]
    assert len(warned) == 1 and "HOI4D_depth_video" in warned[0]


def test_writer_puts_depth_where_the_public_layout_has_it(tmp_path):
    entries = write_dataset(tmp_path, [make_sample()])
    rel = entries[0]["video_id"]
    assert (tmp_path / "HOI4D_depth_video" / rel / "align_depth" / "00000.png").is_file()
    assert not (tmp_path / "HOI4D_release" / rel / "align_depth").exists()


def test_depth_written_by_earlier_psg4d_is_still_read(tmp_path):
    entries = write_dataset(tmp_path, [make_sample()])
    rel = entries[0]["video_id"]
    (tmp_path / "HOI4D_release" / rel / "align_depth").parent.mkdir(parents=True, exist_ok=True)
    shutil.move(tmp_path / "HOI4D_depth_video" / rel / "align_depth", tmp_path / "HOI4D_release" / rel / "align_depth")
    assert HOIReader(tmp_path).read_video("v0").depth is not None
