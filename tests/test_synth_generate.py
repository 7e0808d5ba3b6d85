"""Generation: determinism, splits, held-out categories, writing and reading back, the CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from psg4d.cli import main
from psg4d.data.readers import open_dataset
from psg4d.data.synth import (
    HELD_OUT_CATEGORIES,
    SynthConfig,
    generate,
    preset_vocabulary,
    simulate_image,
    simulate_video,
    split_counts,
)
from psg4d.data.synth.world import CATEGORIES, GROUPS, SHAPES, STATIC_PREDICATES, TEXTURES, THING_CATEGORIES
from psg4d.errors import ConfigError

SMALL = dict(videos=5, images=8, frames=6, size=32)


def _annotation_digest(root: Path) -> dict[str, str]:
    """sha256 of every annotation file (JSON indexes and per-frame mask files)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix in (".json", ".npz", ".png"):
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_vocabulary_size_and_recipes():
    assert len(THING_CATEGORIES) >= 30
    for c in CATEGORIES.values():
        assert c.group in GROUPS and c.texture in TEXTURES and all(p.shape in SHAPES for p in c.parts), c.name
    looks = {(c.parts, c.color, c.texture) for c in THING_CATEGORIES if c.group != "agent"}
    assert len(looks) == len([c for c in THING_CATEGORIES if c.group != "agent"])  # every recipe distinct
    for preset in ("hoi", "gta"):
        v = preset_vocabulary(preset)
        assert set(v.held_out) <= set(v.all_categories)
        assert not set(v.held_out) & set(v.train_categories)
        assert all(CATEGORIES[c].is_thing for c in v.thing_classes)
        assert all(not CATEGORIES[c].is_thing for c in v.stuff_classes)


def test_same_seed_same_video_and_order_independent():
    cfg = SynthConfig(preset="hoi", **SMALL)
    a = simulate_video(cfg, "train", 2)
    _ = simulate_video(cfg, "val", 0)  # generating other videos in between changes nothing
    b = simulate_video(cfg, "train", 2)
    assert np.array_equal(a.video.rgb, b.video.rgb) and np.array_equal(a.video.depth, b.video.depth)
    assert json.dumps(a.graph.to_json()) == json.dumps(b.graph.to_json())
    c = simulate_video(cfg, "train", 3)
    assert not np.array_equal(a.video.rgb, c.video.rgb)
    d = simulate_video(SynthConfig(preset="hoi", seed=1, **SMALL), "train", 2)
    assert not np.array_equal(a.video.rgb, d.video.rgb)


@pytest.mark.parametrize("preset", ["hoi", "gta"])
def test_video_sample_shapes(preset):
    cfg = SynthConfig(preset=preset, frames=8, size=48)
    s = simulate_video(cfg, "train", 0)
    v, g = s.video, s.graph
    assert v.rgb.shape == (8, 48, 48, 3) and v.rgb.dtype == np.uint8
    assert v.depth.shape == (8, 48, 48) and v.depth.dtype == np.float32
    assert v.intrinsics.shape == (3, 3) and v.intrinsics[0, 0] > 0
    g.validate(require_tubes=True)
    cats = [o.category for o in g.objects]
    assert "floor" in cats and "wall" in cats
    assert {"hoi": "hand", "gta": "person"}[preset] in cats
    n_things = sum(o.is_thing for o in g.objects)
    assert n_things >= 4
    # panoptic: masks of one frame never overlap and cover every pixel that has depth
    dense = np.stack([o.tube.to_dense() for o in g.objects])  # [N, T, H, W]
    assert dense.sum(0).max() == 1
    assert np.array_equal(dense.any(0), v.depth > 0)
    assert len(g.relations) >= 3


def test_image_sample_is_single_frame_static():
    s = simulate_image(SynthConfig(preset="gta"), "train", 4)
    assert s.video.rgb.shape[0] == 1 and s.video.depth is None
    assert s.graph.relations and all(r.predicate in STATIC_PREDICATES for r in s.graph.relations)
    assert all(r.spans == [(0, 0)] for r in s.graph.relations)


def test_split_counts():
    assert split_counts(10, (0.7, 0.15, 0.15)) == {"train": 6, "val": 2, "test": 2}
    assert split_counts(20, (0.8, 0.1, 0.1)) == {"train": 16, "val": 2, "test": 2}
    c = split_counts(3, (0.7, 0.15, 0.15))
    assert c == {"train": 1, "val": 1, "test": 1}
    assert split_counts(1, (0.7, 0.15, 0.15))["train"] == 1
    for n in range(0, 30):
        assert sum(split_counts(n, (0.6, 0.2, 0.2)).values()) == n


def test_held_out_categories_only_in_4d_test():
    cfg = SynthConfig(preset="hoi", frames=4, size=32)
    held = set(HELD_OUT_CATEGORIES["hoi"])
    for split in ("train", "val"):
        for i in range(12):
            cats = {o.category for o in simulate_video(cfg, split, i).graph.objects}
            assert not cats & held, (split, i, cats & held)
    test_cats = set()
    for i in range(4):
        test_cats |= {o.category for o in simulate_video(cfg, "test", i).graph.objects}
    assert test_cats & held
    img_cats = set()
    for i in range(40):
        img_cats |= {o.category for o in simulate_image(cfg, "train", i).graph.objects}
    assert held <= img_cats


def test_config_errors():
    with pytest.raises(ConfigError, match="preset"):
        SynthConfig(preset="nope")
    with pytest.raises(ConfigError, match="frames"):
        SynthConfig(frames=1)
    with pytest.raises(ConfigError, match="size"):
        SynthConfig(size=4)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    cfg = SynthConfig(preset="hoi", workers=1, **SMALL)
    summary = generate(cfg, root / "out", progress=False)
    return cfg, summary, root / "out"


def test_generate_writes_readable_datasets(written):
    cfg, summary, out = written
    assert summary.videos == {"train": 3, "val": 1, "test": 1}
    assert sum(summary.images.values()) == 8
    r4 = open_dataset(out / "4d")
    assert r4.format_name == "psg4d-hoi"
    assert r4.splits == ["train", "val", "test"]
    assert list(r4.predicate_vocab) == list(preset_vocabulary("hoi").predicates)
    for vid in r4.video_ids():
        s = r4.read(vid)
        s.video.validate()
        s.graph.validate(require_tubes=True)
        assert s.video.depth is not None and s.video.intrinsics is not None
        split, idx = vid.split("_")[1], int(vid.split("_")[2])
        ref = simulate_video(cfg, split, idx)
        # masks and relations survive the round trip exactly; depth to the millimetre
        assert {o.object_id: o.category for o in s.graph.objects} == {o.object_id: o.category for o in ref.graph.objects}
        for o in ref.graph.objects:
            got = next(x for x in s.graph.objects if x.object_id == o.object_id)
            assert np.array_equal(got.tube.to_dense(), o.tube.to_dense())
        key = lambda g: sorted((r.subject_id, r.object_id, r.predicate, tuple(r.spans)) for r in g.relations)  # noqa: E731
        assert key(s.graph) == key(ref.graph)
        assert np.abs(s.video.depth - ref.video.depth).max() < 1e-3
    r2 = open_dataset(out / "2d")
    assert r2.format_name == "psg"
    ids = r2.video_ids()
    assert len(ids) == 8
    g = r2.read_graph(ids[0])
    assert g.num_frames == 1
    meta = json.loads((out / "synth_meta.json").read_text())
    assert meta["held_out_categories"] == list(HELD_OUT_CATEGORIES["hoi"])
    assert meta["videos"] == summary.videos and meta["preset"] == "hoi" and meta["seed"] == 0
    assert not set(meta["held_out_categories"]) & set(meta["categories_4d_train"])


def test_generate_is_byte_identical_across_workers(written, tmp_path):
    cfg, _, out = written
    cfg2 = SynthConfig(preset="hoi", workers=2, **SMALL)
    generate(cfg2, tmp_path / "again", progress=False)
    assert _annotation_digest(out) == _annotation_digest(tmp_path / "again")


def test_cli_synth(tmp_path, capsys):
    rc = main(["synth", "--preset", "gta", "--videos", "3", "--images", "3", "--frames", "4", "--size", "32",
               "--seed", "5", "--workers", "1", "--out", str(tmp_path / "d")])  # fmt: skip
    assert rc == 0
    assert "wrote 3 videos" in capsys.readouterr().out
    assert open_dataset(tmp_path / "d" / "4d").video_ids("test")
    rc = main(["synth", "--preset", "bogus", "--out", str(tmp_path / "e")])
    assert rc == 2
    assert "unknown preset" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()
