"""``psg4d synth --preset gta`` writes the PSG4D-GTA layout: what the GTA reader reads back is what the
simulator produced (RGB, depth, objects with their thing/stuff role and tubes, relations after the id
convention), and the layout is the one PSG4D's ``merge_masks.py`` leaves."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from psg4d.cli import main
from psg4d.data.readers import FORMATS, open_dataset
from psg4d.data.readers.gta import (
    STUFF_OFFSET,
    GTAReader,
    gta_object_ids,
    metres_to_ndc_depth,
    ndc_depth_to_metres,
    ndc_projection,
    write_gta_video,
)
from psg4d.data.schema import ObjectTrack, Sample
from psg4d.data.synth import SynthConfig, generate, preset_vocabulary, simulate_video
from psg4d.data.synth.generate import PRESETS
from psg4d.data.synth.layouts import LAYOUTS_4D
from psg4d.errors import DataError

CFG = SynthConfig(preset="gta", videos=4, images=2, frames=5, size=32, workers=1)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("gta") / "out"
    generate(CFG, out, progress=False)
    return out


def _ref(vid: str) -> Sample:
    _, split, idx = vid.split("_")
    return simulate_video(CFG, split, int(idx))


def test_presets_pick_their_layout_from_the_table(world):
    assert {p: s.format_4d for p, s in PRESETS.items()} == {"hoi": "psg4d-hoi", "gta": "psg4d-gta"}
    assert all(name in FORMATS for name in LAYOUTS_4D)
    r = open_dataset(world / "4d")
    assert isinstance(r, GTAReader) and r.format_name == "psg4d-gta"
    assert not (world / "4d" / "psg4d_hoi.json").exists()
    vocab = preset_vocabulary("gta")
    assert r.splits == ["train", "val", "test"] and len(r.video_ids()) == CFG.videos
    assert r.object_vocab == list(vocab.all_categories) and r.predicate_vocab == list(vocab.predicates)
    meta = json.loads((world / "synth_meta.json").read_text())
    assert meta["format_4d"] == "psg4d-gta" and meta["format_2d"] == "psg"
    assert open_dataset(world / "2d").format_name == "psg"


def test_round_trip_equals_the_simulation(world):
    r = open_dataset(world / "4d")
    stuff_seen = 0
    for vid in r.video_ids():
        ref, got = _ref(vid), r.read(vid)
        assert np.array_equal(got.video.rgb, ref.video.rgb)
        assert np.allclose(got.video.depth, ref.video.depth, rtol=1e-5, atol=0)  # 0 (no surface) stays 0
        assert np.array_equal(got.video.intrinsics, ref.video.intrinsics)
        assert got.video.frame_indices.tolist() == ref.video.frame_indices.tolist() and got.video.fps == ref.video.fps
        ids = gta_object_ids(ref.graph.objects)
        by_id = got.graph.object_by_id()
        assert sorted(by_id) == sorted(ids.values())
        for o in ref.graph.objects:
            g = by_id[ids[o.object_id]]
            assert (g.category, g.is_thing, g.attributes) == (o.category, o.is_thing, o.attributes)
            assert np.array_equal(g.tube.to_dense(), o.tube.to_dense())
            # things keep their ids; a stuff object's id is its mask value, background value + 1000
            assert ids[o.object_id] == o.object_id + (0 if o.is_thing else STUFF_OFFSET)
            stuff_seen += not o.is_thing

        def key(rels, m=lambda i: i):
            return sorted((m(x.subject_id), x.predicate, m(x.object_id), tuple(x.spans)) for x in rels)

        assert key(got.graph.relations) == key(ref.graph.relations, ids.__getitem__)
        assert got.graph.relations
        index_only = r.read_graph(vid, with_masks=False)  # the size comes from the index's meta
        assert (index_only.height, index_only.width) == (got.graph.height, got.graph.width) == (CFG.size, CFG.size)
    assert stuff_seen >= 2 * CFG.videos  # floor and wall in every video


def test_files_are_the_public_layout(world):
    root = world / "4d"
    vid = open_dataset(root).video_ids("train")[0]
    names = sorted(p.name for p in (root / "masks" / vid).iterdir())
    assert names == [f"{t:06d}.npy" for t in range(CFG.frames)]
    for sub, ext in (("images", "bmp"), ("depth", "npy"), ("visible", "npy"), ("rage_matrices", "npz")):
        assert sorted(p.name for p in (root / sub / vid).iterdir()) == [n.replace("npy", ext) for n in names]
    with Image.open(root / "images" / vid / "000000.bmp") as im:
        assert im.format == "BMP" and im.mode == "RGB"
    panoptic, visible = np.load(root / "masks" / vid / "000000.npy"), np.load(root / "visible" / vid / "000000.npy")
    assert panoptic.dtype == visible.dtype == np.uint16
    # merge_masks.py: the thing ids of visible, and background value + 1000 where visible is 0
    assert np.array_equal(panoptic[visible != 0], visible[visible != 0])
    assert (visible < STUFF_OFFSET).all() and (panoptic[visible == 0] > STUFF_OFFSET).any()
    index = json.loads((root / "sailvos3d.json").read_text())
    assert set(index["objects"]) == {"thing", "stuff"} and index["objects"]["stuff"] == ["floor", "wall"]
    entry = index["data"][0]
    assert "object" in entry and all(len(x) == 4 and isinstance(x[1], str) for x in entry["relations"])
    assert np.load(root / "rage_matrices" / vid / "000000.npz")["P_inv"].shape == (4, 4)


def test_ndc_depth_round_trips_under_both_projections():
    rng = np.random.default_rng(0)
    d = rng.uniform(0.3, 60.0, size=(6, 9)).astype(np.float32)
    d[0, :3] = [0.0, np.nan, -1.0]  # no depth -> the sky value -> 0
    K = np.array([[20.0, 0, 4.0], [0, 21.0, 2.5], [0, 0, 1]])
    near, far = 0.5, 100.0  # an OpenGL projection, as tests/_fixtures_gta.py uses
    gl = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -(far + near) / (far - near), -1],
                   [0, 0, -2 * far * near / (far - near), 0]])  # fmt: skip
    for p, rtol in ((ndc_projection(K, 6, 9), 1e-5), (gl, 1e-3)):
        stored = metres_to_ndc_depth(d, p)
        assert stored.dtype == np.float32
        back = ndc_depth_to_metres(stored, np.linalg.inv(p))
        assert np.allclose(back[d > 0], d[d > 0], rtol=rtol) and (back[0, :3] == 0).all()


def _obj(oid: int, thing: bool = True) -> ObjectTrack:
    return ObjectTrack(object_id=oid, category="x", is_thing=thing)


def test_object_id_convention():
    objs = [_obj(1, False), _obj(1001, False), _obj(4), _obj(2000), _obj(7000, False), _obj(999), _obj(2, False)]
    # 1001 is already a stuff id, so stuff 1 (background value 1) takes the next free one
    assert gta_object_ids(objs) == {1: 1003, 1001: 1001, 4: 4, 2000: 1, 7000: 1004, 999: 999, 2: 1002}
    # a GTA graph read back keeps its ids
    assert gta_object_ids([_obj(3), _obj(1003, False)]) == {3: 3, 1003: 1003}
    with pytest.raises(DataError, match="no free thing id"):
        gta_object_ids([_obj(i) for i in range(1000, 2001)])


def test_writer_refuses_what_the_layout_cannot_hold(tmp_path):
    s = simulate_video(CFG, "train", 0)
    floor = next(o for o in s.graph.objects if o.category == "floor")
    floor.is_thing = True
    with pytest.raises(DataError, match="'floor'.*tells stuff by class"):
        write_gta_video(tmp_path, s, stuff_classes=("floor", "wall"))
    floor.is_thing = False
    s.video.depth = None
    with pytest.raises(DataError, match="needs depth"):
        write_gta_video(tmp_path, s, stuff_classes=("floor", "wall"))


def test_cli_inspect_and_the_synth_root_hint(world, capsys):
    assert main(["data", "inspect", str(world / "4d"), "--format", "psg4d-gta"]) == 0
    assert "format psg4d-gta" in capsys.readouterr().out
    assert main(["data", "inspect", str(world)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{world} is a psg4d synth output: inspect {world / '4d'} (format psg4d-gta) or {world / '2d'} (format psg)" in err
    assert main(["data", "inspect", str(world), "--format", "psg4d-gta"]) == 2
    assert "sailvos3d.json: file not found" in (err := capsys.readouterr().err) and "psg4d synth output" in err
    assert main(["data", "inspect", str(world / "4d"), "--format", "psg4d-hoi"]) == 2
    assert "the folder holds a psg4d-gta dataset" in capsys.readouterr().err
