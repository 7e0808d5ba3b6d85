"""Format registry, ``psg4d data inspect`` / ``convert`` and the canonical layout."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from typer.testing import CliRunner

import _fixtures_hoi as pub_hoi
import _fixtures_pvsg as pub_pvsg
from psg4d.cli import app, main
from psg4d.data.inspect import format_inspection, inspect_dataset
from psg4d.data.readers import FORMATS, detect_format, open_dataset
from psg4d.data.readers.canonical import CanonicalReader, write_canonical
from psg4d.data.readers.hoi import HOIReader, write_hoi_index, write_hoi_video
from psg4d.data.schema import iter_scene_graphs
from psg4d.errors import DataError
from test_readers_hoi import CATS, PREDS, make_sample
from test_readers_pvsg import make_pvsg


@pytest.fixture()
def hoi(tmp_path):
    root = tmp_path / "hoi"
    samples = [make_sample("v0", 0), make_sample("v1", 1), make_sample("v2", 2)]
    entries = [write_hoi_video(root, s, categories=CATS) for s in samples]
    write_hoi_index(root, entries, categories=CATS, predicates=PREDS, splits={"train": ["v0", "v1"], "val": ["v2"]})
    return root


def test_registry_table_and_detection(hoi, tmp_path):
    assert set(FORMATS) == {"canonical", "psg4d-gta", "psg4d-hoi", "pvsg", "psg", "vg"}
    assert len({c.marker for c in FORMATS.values()}) == len(FORMATS)
    assert detect_format(hoi) == "psg4d-hoi"
    assert isinstance(open_dataset(hoi), HOIReader)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"empty.*no known dataset marker.*psg4d-hoi \(psg4d_hoi\.json\)"):
        open_dataset(empty)
    (hoi / "pvsg.json").write_text("{}")
    with pytest.raises(DataError, match="ambiguous.*psg4d-hoi, pvsg"):
        open_dataset(hoi)
    assert isinstance(open_dataset(hoi, "psg4d-hoi"), HOIReader)
    with pytest.raises(DataError, match="unknown format 'coco'.*vg \\(relationships.json\\)"):
        open_dataset(hoi, "coco")
    with pytest.raises(DataError, match=r"sailvos3d\.json.*file not found"):
        open_dataset(hoi, "psg4d-gta")


def test_inspect_counts_from_index_only(hoi):
    # remove every mask and frame: inspect must still work from the index
    for sub in ("HOI4D_mask", "HOI4D_release"):
        for p in sorted((hoi / sub).rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
    s = inspect_dataset(open_dataset(hoi))
    assert s["splits"]["train"] == {"videos": 2, "frames": 8, "objects": 6, "relations": 4, "spans": 6,
                                    "predicates": {"on": 2, "pick up": 2}, "dropped_relations": {}}
    assert s["splits"]["val"]["videos"] == 1 and s["all"]["videos"] == 3 and s["all"]["frames"] == 12
    text = format_inspection(s)
    assert "train" in text and "pick up" in text and "psg4d-hoi" in text


def test_convert_round_trip(hoi, tmp_path):
    out = tmp_path / "canon"
    info = write_canonical(open_dataset(hoi), out, progress=False)
    assert info["num_videos"] == 3 and info["splits"] == {"train": ["v0", "v1"], "val": ["v2"]}
    assert not list(tmp_path.glob(".canon*"))  # no temporary folder left behind
    c = open_dataset(out)
    assert isinstance(c, CanonicalReader) and c.splits == ["train", "val"] and c.dataset_has_depth
    src = HOIReader(hoi)
    for vid in ("v0", "v2"):
        a, b = src.read(vid), c.read(vid)
        np.testing.assert_array_equal(a.video.rgb, b.video.rgb)
        np.testing.assert_array_equal(a.video.depth, b.video.depth)
        np.testing.assert_allclose(a.video.intrinsics, b.video.intrinsics)
        assert a.graph.to_json() == b.graph.to_json()
    # the split file is a ground-truth file as is
    assert [g.video_id for g in iter_scene_graphs(out / "graphs" / "train.jsonl")] == ["v0", "v1"]
    assert inspect_dataset(c)["all"] == inspect_dataset(src)["all"]


def test_convert_one_split_rgb_only_via_cli(tmp_path):
    src = tmp_path / "pvsg"
    src.mkdir()
    make_pvsg(src)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["data", "convert", str(src), "--out", str(out), "--split", "val"])
    assert res.exit_code == 0, res.output
    assert "wrote 1 videos" in res.output
    c = open_dataset(out)
    assert c.video_ids() == ["ego_v1"] and not c.dataset_has_depth and c.read_video("ego_v1").depth is None
    assert json.loads((out / "psg4d_dataset.json").read_text())["source_format"] == "pvsg"
    res = CliRunner().invoke(app, ["data", "inspect", str(out), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["all"]["relations"] == 2


def test_failed_convert_leaves_old_output(hoi, tmp_path):
    out = tmp_path / "canon"
    write_canonical(open_dataset(hoi), out, progress=False)
    before = (out / "psg4d_dataset.json").read_text()
    (hoi / "HOI4D_release" / "v2" / "align_rgb" / "00001.jpg").unlink()
    with pytest.raises(DataError, match="00001.jpg"):
        write_canonical(open_dataset(hoi), out, progress=False)
    assert (out / "psg4d_dataset.json").read_text() == before
    assert not list(tmp_path.glob(".canon*"))


def test_canonical_bad_input(hoi, tmp_path):
    out = tmp_path / "canon"
    write_canonical(open_dataset(hoi), out, split="val", progress=False)
    (out / "videos" / "v2.npz").unlink()
    with pytest.raises(DataError, match=r"v2\.npz.*missing video file"):
        open_dataset(out).read_video("v2")
    idx = json.loads((out / "psg4d_dataset.json").read_text())
    idx["graph_index"]["v2"][1] += 3  # a corrupt offset lands mid-line
    (out / "psg4d_dataset.json").write_text(json.dumps(idx))
    with pytest.raises(DataError, match=r"val\.jsonl"):
        open_dataset(out).read_graph("v2")


def test_cli_errors_exit_2(tmp_path, capsys):
    assert main(["data", "inspect", str(tmp_path / "nope")]) == 2
    assert "nope: dataset folder not found" in capsys.readouterr().err
    tmp_path.joinpath("psg4d_hoi.json").write_text("{bad")
    assert main(["data", "inspect", str(tmp_path)]) == 2
    assert "psg4d_hoi.json: malformed JSON" in capsys.readouterr().err
    assert main(["data", "convert", str(tmp_path), "--out", str(tmp_path / "o"), "--format", "xyz"]) == 2
    assert "unknown format 'xyz'" in capsys.readouterr().err


def _table_rows(out: str) -> list[str]:
    """The first column of the split table (the lines after the header, up to the first blank line)."""
    return [line.split()[0] for line in itertools.takewhile(bool, out.splitlines()[2:])]


def test_cli_inspect_table(hoi, capsys):
    assert main(["data", "inspect", str(hoi), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert _table_rows(out) == ["val"], out
    assert main(["data", "inspect", str(hoi), "--split", "test"]) == 2
    assert "no split 'test'" in capsys.readouterr().err


def test_inspect_prints_one_row_per_split(hoi, tmp_path, capsys):
    assert main(["data", "inspect", str(hoi)]) == 0
    assert _table_rows(capsys.readouterr().out) == ["train", "val", "all"]
    single = tmp_path / "single"
    single.mkdir()
    pub_hoi.build_psg4d_hoi(single)  # no split table: the one split "all"
    assert main(["data", "inspect", str(single)]) == 0
    out = capsys.readouterr().out
    assert _table_rows(out) == ["all"], out


def test_cli_inspect_reports_dropped_relations(tmp_path, capsys):
    pub_pvsg.build_pvsg(tmp_path)
    assert main(["data", "inspect", str(tmp_path)]) == 0
    assert "relations dropped as the dataset's own loader drops them: 1 (unknown predicate)" in capsys.readouterr().out
    assert main(["data", "inspect", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["all"]["dropped_relations"] == {"unknown_predicate": 1}
