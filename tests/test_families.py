"""The model registry (psg4d.families): which family a checkpoint header or an experiment config
names, with one clear line for anything else."""

from __future__ import annotations

import json

import pytest

from psg4d.cli import main
from psg4d.errors import CheckpointError, ConfigError
from psg4d.families import FAMILIES, family_of_checkpoint, family_of_config, header, read_header, strip_header


def _ckpt(tmp_path, name, config) -> str:
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return d


def test_headers_old_and_new_name_their_family(tmp_path):
    cases = {
        "llm_now": ({"format": "psg4d-model", "kind": "psg4d_llm", "version": 2, "model": {}}, "psg4d_llm", 2),
        "llm_v1": ({"format": "psg4d-model", "version": 1, "model": {}}, "psg4d_llm", 1),  # before "kind"
        "pipe_now": ({**header("pipeline"), "segmenter": {}}, "pipeline", 1),
        "pipe_old": ({"kind": "pipeline", "segmenter": {}}, "pipeline", 1),  # before "format"
    }
    for name, (config, kind, version) in cases.items():
        head = read_header(_ckpt(tmp_path, name, config))
        assert (head.format, head.kind, head.version) == ("psg4d-model", kind, version), name
        assert family_of_checkpoint(tmp_path / name) is FAMILIES[kind]
    assert strip_header({**header("pipeline"), "seed": 1}) == {"kind": "pipeline", "seed": 1}


@pytest.mark.parametrize("config, message", [
    ({"format": "psg4d-model", "kind": "detr", "version": 1}, "kind 'detr' is no model family this psg4d knows"),
    ({"format": "psg4d-model", "kind": "pipeline", "version": 7},
     "pipeline baseline checkpoint version 7; this psg4d reads version 1"),
    ({"format": "psg4d-model", "kind": "psg4d_llm", "version": "2"}, "\"version\" must be a whole number"),
    ({"format": "other"}, "not a psg4d checkpoint"),
    ({"kind": "segmenter", "segmenter": {}}, "one stage of a pipeline baseline (kind 'segmenter'), not a whole model"),
    ([1, 2], "the top level is not an object"),
    ("{not json", "malformed JSON"),
])
def test_a_header_that_names_no_family_is_one_line(tmp_path, config, message):
    ck = _ckpt(tmp_path, "ck", config)
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        family_of_checkpoint(ck)
    assert str(ck / "config.json") in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="checkpoint folder not found"):
        family_of_checkpoint(tmp_path / "nowhere")


def test_config_kind_chooses_the_trainer():
    assert family_of_config({"model": {}}, where="x.yaml").kind == "psg4d_llm"
    assert family_of_config({"kind": "psg4d_llm"}, where="x.yaml").kind == "psg4d_llm"
    assert family_of_config({"kind": "pipeline"}, where="x.yaml").kind == "pipeline"
    with pytest.raises(ConfigError, match="x.yaml: kind 'yolo' is no model family"):
        family_of_config({"kind": "yolo"}, where="x.yaml")
    # every row names functions that exist
    for family in FAMILIES.values():
        from psg4d.families import _resolve

        assert callable(_resolve(family.trainer)) and callable(_resolve(family.predictor))


def test_commands_refuse_a_checkpoint_of_no_family_in_one_line(tmp_path, capsys):
    ck = _ckpt(tmp_path, "ck", {"format": "psg4d-model", "kind": "detr", "version": 1})
    frames = tmp_path / "frames"
    frames.mkdir()
    from PIL import Image
    import numpy as np

    for i in range(2):
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(frames / f"{i}.png")
    assert main(["predict", "--ckpt", str(ck), "--rgb", str(frames), "--out", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "kind 'detr'" in err and len(err.splitlines()) == 1
    yaml_file = tmp_path / "exp.yaml"
    yaml_file.write_text("kind: yolo\n")
    assert main(["train", "--config", str(yaml_file)]) == 2
    err = capsys.readouterr().err.strip()
    assert "kind 'yolo' is no model family" in err and len(err.splitlines()) == 1
