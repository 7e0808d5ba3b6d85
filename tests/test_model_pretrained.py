"""Checkpoints reference frozen pretrained weights (path + fingerprint) instead of copying them,
and never depend on the working directory."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from psg4d.errors import CheckpointError
from psg4d.model.imagebind import IMAGEBIND_SIZES
from psg4d.model.mask_decoder import MaskDecoderConfig, build_mask_decoder
from psg4d.model.psg4d_llm import PSG4DModel
from psg4d.model.llm import LLMConfig
from psg4d.model.weight_files import WEIGHTS_ENV, WEIGHTS_SHA256, file_sha256, fingerprint
from psg4d.model.provenance import pretrained_source
from test_model_psg4d import make_sample, tiny_config
from test_model_vision_backbones import _imagebind_state_dict
from test_model_vision_decoder import _sam2_like_checkpoint


def _weights(folder):
    """An ImageBind-layout file (test size) and a SAM2-layout file (tiny decoder) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(_imagebind_state_dict(IMAGEBIND_SIZES["test"]), folder / "imagebind_test.pth")
    torch.manual_seed(5)
    _sam2_like_checkpoint(folder / "sam2_test.pt", build_mask_decoder(MaskDecoderConfig(in_dim=24)), extra_dim=64)
    return folder / "imagebind_test.pth", folder / "sam2_test.pt"


def _config(ib: str, sam: str):
    cfg = tiny_config()
    cfg.image_size = 56
    cfg.encoder = replace(cfg.encoder, backbone="imagebind", imagebind_size="test", dim=24, pretrained=True,
                          weights_path=ib, depth_norm="omnivore_disparity")
    cfg.mask_decoder = replace(cfg.mask_decoder, in_dim=24, pretrained=True, weights_path=sam)
    cfg.__post_init__()
    return cfg


def _frozen_model(cfg) -> PSG4DModel:
    """Built, with its pretrained parameters frozen as a training stage would leave them."""
    torch.manual_seed(0)
    model = PSG4DModel.from_config(cfg)
    pretrained = model.pretrained_parameters()
    for n, p in model.named_parameters():
        if n in pretrained:
            p.requires_grad_(False)
    with torch.no_grad():  # "trained": the trainable parameters differ from a fresh build
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    return model.eval()


def _loss(model: PSG4DModel, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch)["loss"]


def test_checkpoint_references_frozen_weights_and_loads_from_anywhere(tmp_path, monkeypatch):
    ib, sam = _weights(tmp_path / "weights")
    monkeypatch.chdir(tmp_path)  # relative weight paths, as in the presets
    model = _frozen_model(_config("weights/imagebind_test.pth", "weights/sam2_test.pt"))
    # the model keeps the paths absolute, and knows which parameters came from which file
    assert model.config.encoder.weights_path == str(ib.resolve())
    sources = {pretrained_source(p) for n, p in model.named_parameters() if n.startswith("encoder.rgb_branch.")}
    assert sources == {str(ib.resolve())}
    batch = model.collate([make_sample(0, size=56)])
    expected = _loss(model, batch)
    model.save_pretrained(tmp_path / "ck")

    from safetensors import safe_open

    with safe_open(str(tmp_path / "ck" / "model.safetensors"), "pt") as f:
        stored = set(f.keys())
    assert not any(k.startswith(("encoder.rgb_branch.", "encoder.depth_branch.")) for k in stored)
    assert not any(k.startswith("mask_decoder.mask_decoder.") for k in stored)
    # what trained (and what started random) is stored
    assert any(k.startswith("encoder.fusion.") for k in stored) and "mask_decoder.input_proj.weight" in stored
    records = json.loads((tmp_path / "ck" / "config.json").read_text())["frozen_weights"]
    by_field = {r["field"]: r for r in records}
    assert set(by_field) == {"encoder.weights_path", "mask_decoder.weights_path"}
    assert by_field["encoder.weights_path"]["path"] == str(ib.resolve())
    assert by_field["encoder.weights_path"]["sha256"] == fingerprint(ib)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative paths would no longer resolve
    again = PSG4DModel.from_pretrained(tmp_path / "ck")
    torch.testing.assert_close(_loss(again, batch), expected)


def test_missing_or_different_frozen_weights_are_refused(tmp_path, monkeypatch):
    ib, sam = _weights(tmp_path / "weights")
    model = _frozen_model(_config(str(ib), str(sam)))
    batch = model.collate([make_sample(0, size=56)])
    expected = _loss(model, batch)
    model.save_pretrained(tmp_path / "ck")
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)

    moved = tmp_path / "moved"
    shutil.move(str(tmp_path / "weights"), moved)
    with pytest.raises(CheckpointError, match=rf"model\.encoder\.weights_path.*{WEIGHTS_ENV}"):
        PSG4DModel.from_pretrained(tmp_path / "ck")
    monkeypatch.setenv(WEIGHTS_ENV, str(moved))  # the documented second place to look
    torch.testing.assert_close(_loss(PSG4DModel.from_pretrained(tmp_path / "ck"), batch), expected)

    sd = torch.load(moved / "imagebind_test.pth", weights_only=True)
    sd["modality_trunks.vision.blocks.0.mlp.fc1.bias"] += 1.0  # other weights under the same name
    torch.save(sd, moved / "imagebind_test.pth")
    os.utime(moved / "imagebind_test.pth", ns=(1, 1))  # a new fingerprint, not a cached one
    with pytest.raises(CheckpointError, match="differs from the weights this checkpoint was trained with"):
        PSG4DModel.from_pretrained(tmp_path / "ck")


def test_relative_weight_paths_resolve_under_the_weights_folder(tmp_path, monkeypatch):
    ib, sam = _weights(tmp_path / "store")
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "store"))
    monkeypatch.chdir(tmp_path)
    model = PSG4DModel.from_config(_config("imagebind_test.pth", "sam2_test.pt"))
    assert model.config.encoder.weights_path == str(ib)
    assert model.config.mask_decoder.weights_path == str(sam)


def test_trainable_pretrained_parameters_are_stored(tmp_path):
    """A pretrained module that trains (not frozen) is stored like any trained weight."""
    ib, sam = _weights(tmp_path / "weights")
    torch.manual_seed(0)
    model = PSG4DModel.from_config(_config(str(ib), str(sam))).eval()
    model.save_pretrained(tmp_path / "ck")
    records = json.loads((tmp_path / "ck" / "config.json").read_text())["frozen_weights"]
    # only what the decoder itself keeps frozen (SAM2's unused point/box prompt paths) is referenced
    assert [r["field"] for r in records] == ["mask_decoder.weights_path"]
    assert all(n.startswith("mask_decoder.prompt_encoder.") for n in records[0]["frozen"])
    again = PSG4DModel.from_pretrained(tmp_path / "ck")
    batch = model.collate([make_sample(0, size=56)])
    torch.testing.assert_close(_loss(again, batch), _loss(model, batch))


def size_mismatch_line(msg: str, weights: Path) -> tuple[int, str, list[int], list[int]]:
    """The one-line "weights do not fit this model" error about ``weights``: (count, example tensor,
    its shape in the file, its shape in the model)."""
    assert "\n" not in msg, msg
    m = re.fullmatch(rf"{re.escape(str(weights))}: weights do not fit this model: (\d+) tensors differ in shape"
                     r" \(e\.g\. (\S+) \[([\d, ]*)\] in the file vs \[([\d, ]*)\] here\);"
                     r" was it trained with other model sizes\?", msg)
    assert m, msg
    shape = lambda text: [int(v) for v in text.split(", ") if v]  # noqa: E731
    return int(m.group(1)), m.group(2), shape(m.group(3)), shape(m.group(4))


def flip_middle_bytes(file: Path, n: int = 1 << 16) -> None:
    """Invert ``n`` bytes (at most a quarter of the file) in the middle of ``file``, keeping its size
    and modification time: damage to tensor data that leaves a safetensors file readable."""
    data = bytearray(file.read_bytes())
    n = min(n, len(data) // 4)
    start = (len(data) - n) // 2
    data[start:start + n] = bytes(b ^ 0xFF for b in data[start:start + n])
    st = file.stat()
    file.write_bytes(bytes(data))
    os.utime(file, ns=(st.st_atime_ns, st.st_mtime_ns))


def assert_still_readable(file: Path) -> None:
    """The damage is invisible to safetensors: only the recorded hash can catch it."""
    from safetensors.torch import load_file

    assert load_file(str(file))


def test_damaged_model_weights_are_refused_by_their_recorded_sha256(tmp_path):
    from psg4d.engine.checkpoint import load_model_weights

    torch.manual_seed(0)
    model = PSG4DModel.from_config(tiny_config()).eval()
    ck = tmp_path / "ck"
    model.save_pretrained(ck)
    weights = ck / "model.safetensors"
    assert json.loads((ck / "config.json").read_text())[WEIGHTS_SHA256] == file_sha256(weights)
    again = PSG4DModel.from_pretrained(ck)  # intact: loads, the same weights
    for k, v in again.state_dict().items():
        torch.testing.assert_close(v, model.state_dict()[k])
    shutil.copytree(ck, tmp_path / "old")

    flip_middle_bytes(weights)
    assert_still_readable(weights)
    for load in (PSG4DModel.from_pretrained, lambda p: load_model_weights(PSG4DModel.from_config(tiny_config()), p)):
        with pytest.raises(CheckpointError) as err:
            load(ck)
        msg = str(err.value)
        assert msg.startswith(f"{weights}: ") and "sha256 hash differs" in msg and "\n" not in msg, msg

    # a checkpoint written before the hash was recorded loads as before, unverified
    old = tmp_path / "old"
    meta = json.loads((old / "config.json").read_text())
    del meta[WEIGHTS_SHA256]
    (old / "config.json").write_text(json.dumps(meta))
    again = PSG4DModel.from_pretrained(old)
    for k, v in again.state_dict().items():
        torch.testing.assert_close(v, model.state_dict()[k])


def test_a_checkpoint_of_other_model_sizes_is_one_line(tmp_path):
    from psg4d.engine.checkpoint import load_model_weights

    model = PSG4DModel.from_config(tiny_config())  # hidden size 128
    model.save_pretrained(tmp_path / "ck")
    smaller = PSG4DModel.from_config(tiny_config(llm=LLMConfig(hidden_size=64, num_layers=2, num_heads=4,
                                                               intermediate_size=256)))
    # a stage's init trained with other sizes, and a config.json edited to other sizes
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    cfg["model"]["llm"]["hidden_size"] = 64
    shutil.copytree(tmp_path / "ck", tmp_path / "edited")
    (tmp_path / "edited" / "config.json").write_text(json.dumps(cfg))
    for folder, load in ((tmp_path / "ck", lambda: load_model_weights(smaller, tmp_path / "ck")),
                         (tmp_path / "edited", lambda: PSG4DModel.from_pretrained(tmp_path / "edited"))):
        with pytest.raises(CheckpointError) as err:
            load()
        count, name, theirs, ours = size_mismatch_line(str(err.value), folder / "model.safetensors")
        differ = [k for k, v in smaller.state_dict().items() if k in model.state_dict()
                  and model.state_dict()[k].shape != v.shape]
        assert count == len(differ) > 1 and name in differ
        assert len(theirs) == len(ours) == 2 and 128 in theirs and 64 in ours
