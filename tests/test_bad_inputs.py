"""Bad inputs to data / eval / train / synth / convert: one ``error: ...`` line naming the file and the
problem, exit status 2, nothing written and nothing of the user's deleted.

Property-based tests check that the readers' JSON, RLE validation and the scene-graph parser
answer arbitrary input with a DataError (or a parse result), never another exception or a hang.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_eval_support import perfect_prediction, random_gt

from psg4d.cli import main
from psg4d.data.masks import rle_encode, rle_problem, rle_run_lengths
from psg4d.data.schema import SceneGraph4D, save_scene_graphs
from psg4d.errors import CheckpointError, DataError, Psg4dError
from psg4d.model.grammar import parse_scene_graph
from psg4d.utils.io import _HOST, atomic_dir

SYNTH = ["synth", "--videos", "3", "--images", "3", "--frames", "2", "--size", "16", "--workers", "1"]


def _fails(capsys, argv: list[str], *needles: str) -> str:
    """Run the CLI, expect exit 2 and exactly one ``error:`` line holding every needle."""
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    for n in needles:
        assert n in err[0], (n, err[0])
    return err[0]


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "world"
    assert main(SYNTH + ["--out", str(out)]) == 0
    return out


@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(1)
    gts = [random_gt(rng, f"vid{i}") for i in range(2)]
    save_scene_graphs(tmp_path / "gt.jsonl", gts)
    preds = [perfect_prediction(g).to_json() for g in gts]
    return tmp_path, preds


def _write_preds(path: Path, preds: list[dict]) -> Path:
    path.write_text("".join(json.dumps(p) + "\n" for p in preds))
    return path


def _eval(d: Path, pred: Path) -> list[str]:
    return ["eval", "--pred", str(pred), "--gt", str(d / "gt.jsonl"), "--out", str(d / "m.json")]


# --------------------------------------------------------------------------- data loss


def test_synth_refuses_zero_videos_before_writing(tmp_path, capsys):
    _fails(capsys, ["synth", "--videos", "0", "--images", "0", "--out", str(tmp_path / "w")], "--videos must be >= 1")
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("command", ["synth", "convert"])
def test_out_dot_in_an_empty_working_folder_is_written_there(command, synth_dir, tmp_path, monkeypatch, capsys):
    """``--out .`` in an empty folder: the output lands in it (the folder itself is kept, so a shell
    standing in it still sees the files), and a second run replaces it there."""
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    argv = SYNTH + ["--out", "."] if command == "synth" else ["data", "convert", str(synth_dir / "4d"), "--out", "."]
    inode = here.stat().st_ino
    for _ in range(2):
        code, err = main(argv), capsys.readouterr().err
        assert code == 0, err
        marker = "synth_meta.json" if command == "synth" else "psg4d_dataset.json"
        assert (here / marker).is_file() and here.stat().st_ino == inode
        assert not [p for p in tmp_path.iterdir() if p.name != "here"]  # no temporaries left beside it
    # a user's own file in the folder is still never replaced
    (here / marker).unlink()
    (here / "notes.txt").write_text("mine")
    _fails(capsys, argv, "not an earlier output")
    assert (here / "notes.txt").read_text() == "mine"


def test_synth_refuses_a_users_folder_and_keeps_its_files(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    _fails(capsys, SYNTH + ["--out", str(out)], str(out), "not an earlier output of psg4d synth", "--overwrite")
    assert (out / "thesis.tex").read_text() == "years of work"
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # no temporaries left


def test_synth_overwrite_moves_a_users_folder_aside_never_deletes(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    assert main(SYNTH + ["--out", str(out), "--overwrite"]) == 0
    assert (out / "synth_meta.json").exists()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("mine.replaced-")]
    assert len(aside) == 1 and (aside[0] / "notes.txt").read_text() == "keep"


def test_synth_replaces_its_own_earlier_output_and_cleans_crashed_temporaries(tmp_path):
    out = tmp_path / "world"
    assert main(SYNTH + ["--out", str(out)]) == 0
    dead = tmp_path / f".world.tmp999999999h{_HOST}-crashed"  # a writer killed mid-way (no such pid)
    (dead / "4d").mkdir(parents=True)
    live = tmp_path / f".world.tmp{os.getpid()}h{_HOST}-busy"  # a concurrent writer still at work
    live.mkdir()
    elsewhere = tmp_path / ".world.tmp999999999h00000000-remote"  # another host's writer: unknowable
    elsewhere.mkdir()
    assert main(SYNTH + ["--out", str(out), "--seed", "4"]) == 0
    assert json.loads((out / "synth_meta.json").read_text())["config"]["seed"] == 4
    assert not dead.exists() and live.exists() and elsewhere.exists()


def test_convert_into_the_sources_parent_is_refused_and_the_source_kept(synth_dir, capsys):
    before = sorted(p.name for p in synth_dir.iterdir())
    _fails(capsys, ["data", "convert", str(synth_dir / "4d"), "--out", str(synth_dir)], "holds the source")
    _fails(capsys, ["data", "convert", str(synth_dir / "4d"), "--out", str(synth_dir), "--overwrite"], "holds the source")
    assert sorted(p.name for p in synth_dir.iterdir()) == before and (synth_dir / "4d").is_dir()


def test_convert_refuses_a_users_folder_and_replaces_its_own(synth_dir, tmp_path, capsys):
    out = tmp_path / "canon"
    out.mkdir()
    (out / "data.csv").write_text("1,2")
    _fails(capsys, ["data", "convert", str(synth_dir / "4d"), "--out", str(out)], "not an earlier output")
    assert (out / "data.csv").exists()
    fresh = tmp_path / "canon2"
    assert main(["data", "convert", str(synth_dir / "4d"), "--out", str(fresh), "--split", "test"]) == 0
    assert main(["data", "convert", str(synth_dir / "4d"), "--out", str(fresh), "--split", "val"]) == 0
    assert list(json.loads((fresh / "psg4d_dataset.json").read_text())["splits"]) == ["val"]


def test_atomic_dir_never_replaces_a_foreign_folder(tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "mine.txt").write_text("x")
    with pytest.raises(Psg4dError, match="not an earlier output"):
        with atomic_dir(target) as tmp:
            (tmp / "config.json").write_text("{}")
            (tmp / "model.safetensors").write_bytes(b"")
    assert (target / "mine.txt").exists() and [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_concurrent_writers_leave_one_whole_output(tmp_path):
    target = tmp_path / "out"
    start = threading.Barrier(6)

    def write(i: int) -> None:
        with atomic_dir(target) as tmp:
            start.wait()
            for name in ("synth_meta.json", "a", "b", "c"):
                (tmp / name).write_text(str(i))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    contents = {p.name: p.read_text() for p in target.iterdir()}
    assert set(contents) == {"synth_meta.json", "a", "b", "c"} and len(set(contents.values())) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize("command", ["synth", "convert", "eval", "train"])
def test_an_out_path_that_cannot_be_written_is_refused_before_the_work(command, synth_dir, files, capsys):
    d, preds = files
    blocker = d / "a_file"
    blocker.write_text("")
    out = blocker / "sub"  # a folder under a file can never be made
    argv = {
        "synth": SYNTH + ["--out", str(out)],
        "convert": ["data", "convert", str(synth_dir / "4d"), "--out", str(out)],
        "eval": ["eval", "--pred", str(_write_preds(d / "p.jsonl", preds)), "--gt", str(d / "gt.jsonl"),
                 "--out", str(out / "m.json")],
        "train": ["train", "--config", "hoi_tiny", "--set", f"data.root={synth_dir}", "--out", str(out)],
    }[command]
    _fails(capsys, argv, "cannot write there")


# --------------------------------------------------------------------------- RLE: hangs and silent wrong results


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("rle", "needle"),
    [
        ({"size": [12, 12], "counts": [10, 20]}, "sum to 30, not H*W = 144"),  # pycocotools looped for ever here
        ({"size": [12, 12], "counts": [200, -56]}, "negative run length"),
        ({"size": [12, 12], "counts": "this is not RLE!"}, "not a COCO RLE string"),
        ({"size": [12, 12]}, "no 'counts'"),
        ("garbage", "must be an RLE object"),
        ({"size": [12, 12], "counts": 7}, "must be a string or a list"),
        ({"size": "12x12", "counts": "PP"}, "'size' must be [H, W]"),
    ],
)
def test_a_bad_rle_names_file_video_object_and_frame(files, capsys, rle, needle):
    d, preds = files
    obj = preds[1]["objects"][2]
    obj["tube"]["rles"][3] = rle
    pred = _write_preds(d / "pred.jsonl", preds)
    _fails(capsys, _eval(d, pred), f"{pred}:2", "video 'vid1'", f"object {obj['object_id']}", "frame 3", needle)
    assert not (d / "m.json").exists()


def test_garbage_mask_text_that_decodes_is_still_refused(files, capsys):
    d, preds = files
    # valid code characters, so pycocotools decodes them into some mask: recall dropped silently
    preds[0]["objects"][0]["tube"]["rles"][0]["counts"] = "1111"
    _fails(capsys, _eval(d, _write_preds(d / "pred.jsonl", preds)), "video 'vid0'", "object 0", "not H*W")


@pytest.mark.parametrize("key", ["objects", "relations"])
def test_a_missing_list_is_an_error_not_an_empty_graph(files, capsys, key):
    d, preds = files
    del preds[0][key]
    _fails(capsys, _eval(d, _write_preds(d / "pred.jsonl", preds)), "pred.jsonl:1", f"missing field {key!r}")


def test_a_missing_tube_is_an_error_not_an_empty_mask(files, capsys):
    d, preds = files
    del preds[1]["objects"][0]["tube"]
    _fails(capsys, _eval(d, _write_preds(d / "pred.jsonl", preds)), "pred.jsonl", "video 'vid1'", "no 'tube'")


def test_non_utf8_prediction_file(files, capsys):
    d, preds = files
    pred = _write_preds(d / "pred.jsonl", preds)
    pred.write_bytes(pred.read_bytes() + b'{"video_id": "caf\xe9"}\n')
    _fails(capsys, _eval(d, pred), str(pred), "line 3: not UTF-8")


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda p: p["relations"][0].update(spans=[[4, 2]]), "span [4, 2] starts after it ends"),
        (lambda p: p["relations"][0].update(spans=[[2, 60]]), "outside the video's frames [0, 5]"),
        (lambda p: p["relations"][0].update(subject_id=77), "subject id 77 is not an object"),
        (lambda p: p["objects"][1].update(object_id=p["objects"][0]["object_id"]), "duplicate object_id"),
        (lambda p: p["relations"][0].update(spans="all"), "malformed relation"),
        (lambda p: p["relations"][0].update(spans=[]), "has an empty span list"),
    ],
)
def test_inconsistent_graphs(files, capsys, edit, needle):
    d, preds = files
    edit(preds[0])
    _fails(capsys, _eval(d, _write_preds(d / "pred.jsonl", preds)), "pred.jsonl:1", needle)


def test_duplicate_video_ids(files, capsys):
    d, preds = files
    _fails(capsys, _eval(d, _write_preds(d / "pred.jsonl", [preds[0], preds[0]])), "vid0")


def test_nan_is_never_written_into_json(tmp_path):
    g = random_gt(np.random.default_rng(0), "v")
    g.relations[0].score = math.nan
    with pytest.raises(Psg4dError, match="v.jsonl: video 'v': refusing to write a non-finite number"):
        save_scene_graphs(tmp_path / "v.jsonl", [g])
    assert not (tmp_path / "v.jsonl").exists()


# --------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from test_model_psg4d import tiny_config

    from psg4d.model.psg4d_llm import PSG4DModel

    path = tmp_path_factory.mktemp("ckpt") / "model"
    PSG4DModel.from_config(tiny_config()).save_pretrained(path)
    return path


def test_checkpoint_with_a_nan_tensor_is_refused_naming_file_and_tensor(checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    from psg4d.model.psg4d_llm import PSG4DModel
    from psg4d.model.weight_files import file_sha256

    bad = tmp_path / "nan"
    shutil.copytree(checkpoint, bad)
    state = load_file(str(bad / "model.safetensors"))
    name = sorted(k for k, v in state.items() if v.is_floating_point())[0]
    state[name].view(-1)[0] = math.nan
    save_file(state, str(bad / "model.safetensors"), metadata={"format": "psg4d"})
    meta = json.loads((bad / "config.json").read_text())
    meta["weights_sha256"] = file_sha256(bad / "model.safetensors")  # saved with the NaN, not damaged since
    (bad / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=rf"nan/model.safetensors: tensor '{name}' holds NaN"):
        PSG4DModel.from_pretrained(bad)


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda p: (p / "config.json").unlink(), "config.json: missing"),
        (lambda p: (p / "model.safetensors").write_bytes((p / "model.safetensors").read_bytes()[:1000]),
         "model.safetensors: corrupted or changed since it was saved: its sha256 hash differs"),
    ],
)
def test_damaged_checkpoint_is_one_line(checkpoint, synth_dir, tmp_path, capsys, damage, needle):
    bad = tmp_path / "bad"
    shutil.copytree(checkpoint, bad)
    damage(bad)
    _fails(capsys, ["eval", "--ckpt", str(bad), "--data", str(synth_dir / "4d"), "--split", "test", "--limit", "1"],
           needle)


# --------------------------------------------------------------------------- training config


def test_invalid_training_values_are_config_errors(synth_dir, tmp_path, capsys):
    base = ["train", "--config", "hoi_tiny", "--set", f"data.root={synth_dir}", "--out", str(tmp_path / "run")]
    _fails(capsys, base + ["--set", "train.lr=-1"], "--set train.lr=-1: train.lr: must be a finite number > 0, got -1.0")
    _fails(capsys, base + ["--set", "train.betas=[0.9, 1.5]"], "train.betas")
    _fails(capsys, base + ["--set", "train.optimizer=adamm"], "did you mean 'adamw'")
    _fails(capsys, base + ["--set", "train.max_grad_norm=.nan"], "train.max_grad_norm: must be a finite number > 0")
    _fails(capsys, base + ["--set", "model.text_loss_weight=-1"], "model.text_loss_weight: must be a finite number >= 0")
    _fails(capsys, base + ["--set", "data.num_workers=-2"], "data.num_workers (-2)")
    _fails(capsys, base + ["--set", "stages.0.lr={llm: -0.1}"], "lr['llm'] must be a finite number >= 0")
    assert not (tmp_path / "run").exists()


def test_a_bad_set_is_blamed_on_the_set_not_on_the_preset(synth_dir, tmp_path, capsys):
    base = ["train", "--config", "hoi_tiny", "--set", f"data.root={synth_dir}", "--out", str(tmp_path / "run")]
    line = _fails(capsys, base + ["--set", "model.nosuch=1"], "--set model.nosuch=1: model: unknown key(s) ['nosuch']")
    assert "hoi_tiny.yaml" not in line
    line = _fails(capsys, base + ["--set", "train.lr=0.01", "--set", "stages.0.max_steps=-5"],
                  "--set stages.0.max_steps=-5: stages[0] ('4d_init'): max_steps must be >= 1")
    assert "hoi_tiny.yaml" not in line
    # the pipeline baseline's configs too
    _fails(capsys, ["train", "--config", "pipeline_hoi_tiny", "--set", f"data.root={synth_dir}",
                    "--set", "relation.max_pairs=0", "--out", str(tmp_path / "p")], "--set relation.max_pairs=0:")
    # a fault of the preset itself stays the preset's
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("_base_: " + str(Path(__file__).parents[1] / "src/psg4d/configs/hoi_tiny.yaml") + "\n"
                   "train:\n  bach_size: 2\n")
    _fails(capsys, ["train", "--config", str(cfg), "--set", "train.lr=0.01"], f"{cfg}: train: unknown key(s)")
    assert not (tmp_path / "run").exists()


def test_config_typo_names_file_and_key_path_and_suggests(tmp_path, capsys):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("_base_: " + str(Path(__file__).parents[1] / "src/psg4d/configs/hoi_tiny.yaml") + "\n"
                   "train:\n  learning_rat: 0.1\n  bach_size: 2\n")
    line = _fails(capsys, ["train", "--config", str(cfg)], f"{cfg}: train: unknown key(s)",
                  "train.bach_size (did you mean 'batch_size'?)")
    assert "valid keys" in line


# --------------------------------------------------------------------------- properties

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(_json)
def test_rle_problem_never_raises(value):
    problem = rle_problem(value, 4, 4)
    assert problem is None or isinstance(problem, str)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 9), st.integers(1, 9), st.lists(st.integers(-3, 30), max_size=12))
def test_rle_lists_are_valid_iff_non_negative_and_summing_to_hw(h, w, counts):
    ok = all(c >= 0 for c in counts) and sum(counts) == h * w
    assert (rle_problem({"size": [h, w], "counts": counts}, h, w) is None) == ok


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.data())
def test_encoded_masks_validate_and_their_runs_cover_the_mask(h, w, data):
    bits = data.draw(st.lists(st.booleans(), min_size=h * w, max_size=h * w))
    rle = rle_encode(np.array(bits, dtype=bool).reshape(h, w))
    assert rle_problem(rle, h, w) is None
    assert sum(rle_run_lengths(rle["counts"])) == h * w


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=200), max_size=40))
def test_rle_strings_never_crash(counts):
    problem = rle_problem({"size": [3, 3], "counts": counts})
    assert problem is None or isinstance(problem, str)


_graph_keys = st.fixed_dictionaries(
    {"video_id": st.text(max_size=4), "num_frames": st.integers(-1, 4), "height": st.integers(1, 4),
     "width": st.integers(1, 4)},
    optional={"objects": _json, "relations": _json, "meta": _json, "object_vocab": _json},
)


@settings(max_examples=300, deadline=None)
@given(_json | _graph_keys)
def test_scene_graph_json_raises_only_data_errors(value):
    try:
        SceneGraph4D.from_json(value, where="f.json").validate("f.json")
    except DataError as e:
        assert str(e).startswith("f.json")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60) | st.lists(st.sampled_from(["a", "[Obj]", "on", ";", "\n", "3", "9" * 5000, "-1"]),
                                        max_size=12).map(" ".join))
def test_parser_never_raises(text):
    result = parse_scene_graph(text, predicates=["on", "next to"], num_frames=5)
    assert all(0 <= t.start <= t.end <= 4 for t in result.triplets)
    parse_scene_graph(text)


def test_unreadable_config_files(tmp_path, capsys):
    binary = tmp_path / "exp.yaml"
    binary.write_bytes(b"train:\n  lr: \xff\xfe\n")
    _fails(capsys, ["train", "--config", str(binary)], f"{binary}: not UTF-8 text")
    _fails(capsys, ["train", "--config", str(tmp_path)], f"{tmp_path}: not a file")


@pytest.mark.parametrize("command", ["inspect", "convert"])
@pytest.mark.parametrize(("extra", "needle"), [
    # a backwards span of a triplet that another span of it covers: merging would hide it
    (lambda r: [r[0], r[1], r[2], r[4], r[3]], "starts after it ends"),
])
def test_a_backwards_span_is_refused_by_inspect_and_convert_never_dropped(synth_dir, tmp_path, capsys, command,
                                                                          extra, needle):
    world = tmp_path / "w"
    shutil.copytree(synth_dir / "4d", world)
    index = world / "psg4d_hoi.json"
    data = json.loads(index.read_text())
    rels = next(v for v in data["data"] if any(r[4] > r[3] for r in v["relations"]))["relations"]
    r = next(r for r in rels if r[4] > r[3])
    rels.append(extra(r))
    index.write_text(json.dumps(data))
    argv = ["data", "inspect", str(world)] if command == "inspect" else ["data", "convert", str(world), "--out",
                                                                          str(tmp_path / "c")]
    code = main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "%|" not in line]  # no progress bar
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {index}") and needle in err[0], err
    assert not (tmp_path / "c").exists()
