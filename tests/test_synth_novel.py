"""Novel categories (only in 4D test: neither 4D train/val nor 2D) and object descriptions."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from psg4d.cli import main
from psg4d.data.descriptions import DESCRIPTION_KEY, description_words, object_description
from psg4d.data.readers import open_dataset
from psg4d.data.readers.canonical import write_canonical
from psg4d.data.schema import ObjectTrack, SceneGraph4D, load_scene_graphs, save_scene_graphs
from psg4d.data.synth import HELD_OUT_CATEGORIES, NOVEL_CATEGORIES, SynthConfig, generate, preset_vocabulary
from psg4d.data.synth.describe import attribute_words, describe_category
from psg4d.data.synth.generate import PRESETS, _options, simulate_scene, split_counts
from psg4d.data.synth.world import CATEGORIES, graspable
from psg4d.errors import ConfigError

NOVEL = ("apple", "phone")
SMALL = dict(frames=4, size=32)


def _scene_cats(cfg: SynthConfig, split: str, index: int, kind: str = "video") -> set[str]:
    scene, _ = simulate_scene(cfg, split, index, kind=kind)
    return {e.name for e in scene.entities}


# ------------------------------------------------------------------ novel categories


def test_without_novel_the_scripts_are_todays():
    """No novel categories: every scene is scripted from the same options as before (so the same
    random draws, the same frames and masks): held-out forced into every other test video."""
    cfg = SynthConfig(preset="hoi", **SMALL)
    assert cfg.novel == () and preset_vocabulary("hoi") == preset_vocabulary("hoi", ())
    held = HELD_OUT_CATEGORIES["hoi"]
    every = tuple(c.name for c in graspable("hoi", held_out_ok=True))
    seen = tuple(c for c in every if c not in held)
    for i in range(8):
        o = _options(cfg, "video", "test", i, 4)
        assert (o.force_category, o.categories) == ((held[(i // 2) % len(held)], every) if i % 2 == 0 else (None, seen))
        assert _options(cfg, "video", "train", i, 4).categories == seen
        assert _options(cfg, "image", "train", i, 4).categories == every


def test_novel_only_in_4d_test_held_out_still_in_2d():
    cfg = SynthConfig(preset="hoi", novel=NOVEL, **SMALL)
    novel, held = set(NOVEL), set(HELD_OUT_CATEGORIES["hoi"])
    for split in ("train", "val"):
        for i in range(15):
            cats = _scene_cats(cfg, split, i)
            assert not cats & (novel | held), (split, i)
    images: set[str] = set()
    for split in ("train", "val", "test"):
        for i in range(20):
            cats = _scene_cats(cfg, split, i, kind="image")
            assert not cats & novel, (split, i)
            images |= cats
    assert held <= images  # the held-out categories are still seen in 2D
    # test videos take turns: held-out, novel, neither
    kinds = Counter()
    test_novel: set[str] = set()
    for i in range(9):
        cats = _scene_cats(cfg, "test", i)
        kind = ("held" if cats & held else "") + ("novel" if cats & novel else "") or "neither"
        assert kind == ("held", "novel", "neither")[i % 3], (i, cats)
        kinds[kind] += 1
        test_novel |= cats & novel
    assert test_novel == novel and kinds == {"held": 3, "novel": 3, "neither": 3}


def test_vocabulary_with_novel():
    v = preset_vocabulary("hoi", NOVEL)
    assert v.novel == NOVEL and set(NOVEL) <= set(v.all_categories)
    assert not set(NOVEL) & set(v.train_categories) and not set(v.held_out) & set(v.train_categories)
    assert not set(NOVEL) & set(v.image_thing_classes) and set(v.held_out) <= set(v.image_thing_classes)
    # "default": the preset's table entry; every word of a default novel category's description is
    # a word of a category 4D training keeps (a zero-shot model can compose it)
    for preset in PRESETS:
        cfg = SynthConfig(preset=preset, novel="default")
        assert cfg.novel == NOVEL_CATEGORIES[preset]
        train = preset_vocabulary(preset, cfg.novel).train_categories
        train_words = {w for c in train for w in describe_category(c).split()}
        for c in cfg.novel:
            assert set(describe_category(c).split()) <= train_words, (preset, c)
    assert SynthConfig(novel=" apple , phone ").novel == NOVEL


@pytest.mark.parametrize(
    "novel, needle",
    [
        ("nope", "'nope' is unknown"),
        ("lime", "'lime' is held out"),
        ("table", "'table' is furniture"),
        ("hand", "'hand' is an agent"),
        ("floor", "'floor' is stuff"),
        ("bucket", "'bucket' is not a hoi category"),
        ("apple,apple", "repeat"),
        (",".join(c.name for c in graspable("hoi", held_out_ok=False)), "for 4D training"),
    ],
)
def test_bad_novel_names_are_config_errors(novel, needle):
    with pytest.raises(ConfigError, match=needle):
        SynthConfig(preset="hoi", novel=novel)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("novel") / "world"
    cfg = SynthConfig(preset="hoi", videos=20, images=12, workers=1, novel=NOVEL, **SMALL)
    assert split_counts(20, cfg.split_fractions)["test"] == 3  # held-out, novel, neither
    generate(cfg, out, progress=False)
    return cfg, out


def test_written_dataset_keeps_novel_out_of_training_and_2d(written):
    cfg, out = written
    meta = json.loads((out / "synth_meta.json").read_text())
    assert meta["novel_categories"] == list(NOVEL)
    assert meta["held_out_categories"] == list(HELD_OUT_CATEGORIES["hoi"])
    assert meta["config"]["novel"] == list(NOVEL)
    assert not set(NOVEL) & set(meta["categories_4d_train"]) and not set(NOVEL) & set(meta["image_thing_classes"])
    assert meta["descriptions"]["apple"] == "small red sphere"
    r4, r2 = open_dataset(out / "4d"), open_dataset(out / "2d")
    cats = {s: {o.category for v in r4.video_ids(s) for o in r4.read_graph(v, with_masks=False).objects}
            for s in r4.splits}  # fmt: skip
    assert not (cats["train"] | cats["val"]) & set(NOVEL) and cats["test"] & set(NOVEL)
    assert not set(NOVEL) & set(r2.object_vocab)  # the 2D class list does not even name them
    cats_2d = {o.category for v in r2.video_ids() for o in r2.read_graph(v, with_masks=False).objects}
    assert not cats_2d & set(NOVEL)
    # what training collects as its vocabulary (the training graphs' categories) has no novel one
    from psg4d.train.data import collect_vocab
    from psg4d.train.stages import DataConfig, DataSourceConfig

    sources = [DataSourceConfig(path=str(out / "4d")), DataSourceConfig(path=str(out / "2d"), lift_2d=True)]
    objects = collect_vocab(sources, DataConfig())[0]
    assert objects and not set(objects) & set(NOVEL)


def test_cli_novel(tmp_path, capsys):
    base = ["synth", "--videos", "3", "--images", "3", "--frames", "2", "--size", "16", "--workers", "1"]
    assert main(base + ["--novel", "apple,phone", "--out", str(tmp_path / "ok")]) == 0
    assert json.loads((tmp_path / "ok" / "synth_meta.json").read_text())["novel_categories"] == ["apple", "phone"]
    capsys.readouterr()
    for bad, needle in (("apple,teapot", "'teapot' is unknown"), ("lime", "held out"), ("hand", "agent"),
                        ("table", "furniture")):  # fmt: skip
        out = tmp_path / "bad"
        code = main(base + ["--novel", bad, "--out", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and needle in err[0], (bad, err)
        assert not out.exists()


# ------------------------------------------------------------------ descriptions


def _name_words() -> set[str]:
    return {w for name in CATEGORIES for w in name.replace("-", " ").split()}


def test_descriptions_never_name_a_category_and_are_distinct_per_preset():
    names = _name_words()
    vocab = set(description_words())
    assert vocab == set(attribute_words())
    for c in CATEGORIES:
        d = describe_category(c)
        words = d.split()
        assert words and not {p for w in words for p in w.split("-")} & names, (c, d)
        assert set(words) <= vocab, (c, d)
    for preset in PRESETS:
        descs = [describe_category(c) for c in preset_vocabulary(preset).all_categories]
        assert len(set(descs)) == len(descs), [d for d, n in Counter(descs).items() if n > 1]
    assert describe_category("mug") == "small white cylinder"
    assert describe_category("can") == "small red cylinder with white stripes"
    assert describe_category("lime") == "small light green sphere"
    assert describe_category("bowling pin") == "tall white capsule with red stripes"


def test_object_description_falls_back_to_the_name():
    assert object_description(ObjectTrack(object_id=1, category="cup")) == "cup"
    o = ObjectTrack(object_id=1, category="cup", attributes={DESCRIPTION_KEY: "small white cylinder"})
    assert object_description(o) == "small white cylinder"
    assert object_description(ObjectTrack(object_id=1, category="cup", attributes={DESCRIPTION_KEY: " "})) == "cup"


def test_descriptions_survive_writing_and_reading(written, tmp_path):
    _, out = written
    seen = 0
    for root in (out / "4d", out / "2d"):
        r = open_dataset(root)
        for vid in r.video_ids()[:4]:
            for o in r.read_graph(vid, with_masks=False).objects:
                assert o.attributes[DESCRIPTION_KEY] == describe_category(o.category)
                assert object_description(o) != o.category
                seen += 1
    assert seen
    # canonical conversion and the scene-graph JSON lines keep them too
    info = write_canonical(open_dataset(out / "4d"), tmp_path / "canon", split="test", progress=False)
    rc = open_dataset(tmp_path / "canon")
    graphs = [rc.read_graph(v) for v in info["splits"]["test"]]
    assert all(o.attributes[DESCRIPTION_KEY] == describe_category(o.category) for g in graphs for o in g.objects)
    save_scene_graphs(tmp_path / "g.jsonl", graphs)
    back = load_scene_graphs(tmp_path / "g.jsonl")
    assert all(
        [o.attributes for o in back[g.video_id].objects] == [o.attributes for o in g.objects] for g in graphs
    )
    assert isinstance(back[graphs[0].video_id], SceneGraph4D)
