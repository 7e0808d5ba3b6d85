"""Our ImageBind-Huge trunks against the official implementation's code: same random weights,
same inputs, including the depth preprocessing (ours from metres + camera, theirs from
Omnivore-normalised disparity).

Needs Meta's ImageBind code, which PyPI carries as ``imagebind-unofficial`` (0.1.1 is
byte-identical to facebookresearch/ImageBind@53680b0). Its metadata requires torchaudio,
pytorchvideo and decord builds that would replace the pinned torch, so install it without
dependencies, plus what its model code imports and psg4d's install does not bring (timm,
einops, ftfy with its wcwidth; the ``imagebind-test`` extra of pyproject.toml lists the same):

    python3 -m pip install --no-deps imagebind-unofficial==0.1.1 timm==1.0.31 einops==0.8.2 ftfy==6.3.1 "wcwidth>=0.2"

Run with ``python3 -m pytest -m slow tests/test_model_vision_imagebind_official.py``
(about 2 minutes and 9 GB of memory on 2 CPU cores: the official model is built whole,
~1.2B parameters).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys

import pytest
import torch

from psg4d.model.backbones import CLIP_MEAN, CLIP_STD
from psg4d.model.encoder import EncoderConfig, build_encoder


def _official_model_module(monkeypatch):
    """``imagebind.models.imagebind_model`` from the installed official package."""
    spec = importlib.util.find_spec("imagebind")
    if spec is None or spec.submodule_search_locations is None:
        pytest.skip("official ImageBind code not installed (see this module's docstring)")
    # imagebind/__init__.py imports its data loaders (torchaudio, pytorchvideo, pkg_resources),
    # which the model code does not use: the parent package is created but its __init__ not run.
    monkeypatch.setitem(sys.modules, "imagebind", importlib.util.module_from_spec(spec))
    return pytest.importorskip("imagebind.models.imagebind_model")


def _omnivore_disparity(depth_m: torch.Tensor, focal_px: torch.Tensor, baseline_m: torch.Tensor) -> torch.Tensor:
    """Omnivore's SUN RGB-D depth input, written from the recipe (not from psg4d's code):
    disparity = baseline * fx / clip(depth, 0.01, 50) (omnivore issue #12), DepthNorm(max_depth=75,
    clamp_max_before_scale=True) (omnivore/transforms.py), Normalize(0.0418, 0.0295) (omnivore/predict.py)."""
    scale = (focal_px * baseline_m).view(-1, 1, 1, 1)
    disparity = scale / depth_m.clamp(0.01, 50.0)
    return (disparity.clamp(0.01, 75.0) / 75.0 - 0.0418) / 0.0295


def _capture(module: torch.nn.Module, store: dict, key: str, *, inputs: bool = False):
    def hook(_mod, args, out):
        store[key] = args[0] if inputs else out

    return module.register_forward_hook(hook)


@pytest.mark.slow
def test_imagebind_huge_matches_official(tmp_path, monkeypatch):
    ib = _official_model_module(monkeypatch)
    torch.manual_seed(0)
    official = ib.imagebind_huge(pretrained=False).eval()
    for modality in ("text", "audio", "thermal", "imu"):  # not used by psg4d; frees ~2 GB
        for table in (official.modality_preprocessors, official.modality_trunks, official.modality_heads):
            del table[modality]
    with torch.no_grad():
        # Initialised LayerNorms and biases are all 1s or 0s; random values make a swapped
        # weight/bias or an unloaded tensor show up in the features.
        for p in official.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    path = tmp_path / "imagebind_huge.pth"
    torch.save(official.state_dict(), path)
    enc = build_encoder(dataclasses.replace(EncoderConfig.full(), weights_path=str(path))).eval()
    path.unlink()

    g = torch.Generator().manual_seed(1)
    rgb = torch.rand(2, 3, 224, 224, generator=g)
    depth = 0.3 + 7.7 * torch.rand(2, 1, 224, 224, generator=g)  # metres
    depth[0, 0, :8, :8] = 0.4  # nearer than the 75 px disparity clamp at this camera
    depth[1, 0, -8:, -8:] = 80.0  # beyond Omnivore's 50 m depth clip
    focal = torch.tensor([518.857901, 600.0])
    baseline = torch.tensor([0.075, 0.095])

    ours: dict[str, torch.Tensor] = {}
    hooks = [
        _capture(enc.rgb_branch.backbone, ours, "vision_trunk"),
        _capture(enc.rgb_branch, ours, "vision"),
        _capture(enc.depth_branch, ours, "depth_input", inputs=True),
        _capture(enc.depth_branch.backbone, ours, "depth_trunk"),
        _capture(enc.depth_branch, ours, "depth"),
    ]
    with torch.no_grad():
        enc(rgb[:, None], depth[:, None], disparity_scale=focal * baseline)  # clips of one frame
        theirs: dict[str, torch.Tensor] = {}
        clip = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        inputs = {"vision": (rgb - clip[0]) / clip[1], "depth": _omnivore_disparity(depth, focal, baseline)}
        theirs["depth_input"] = inputs["depth"]
        for modality, x in inputs.items():
            pre = official.modality_preprocessors[modality](**{modality: x})
            tokens = official.modality_trunks[modality](**pre["trunk"])  # [B, 1 + N, E]
            head = official.modality_heads[modality]  # LayerNorm, SelectElement(CLS), Linear
            theirs[f"{modality}_trunk"] = tokens[:, 1:]
            theirs[modality] = head[2](head[0](tokens[:, 1:]))  # [B, N, 1024]: every patch token
    for h in hooks:
        h.remove()

    ours["vision_trunk"] = ours["vision_trunk"].flatten(2).transpose(1, 2)  # [B, E, h, w] -> [B, N, E]
    ours["depth_trunk"] = ours["depth_trunk"].flatten(2).transpose(1, 2)
    ours["vision"], ours["depth"] = ours["vision"][0], ours["depth"][0]  # Branch returns (tokens, grid)
    expected_shapes = {
        "depth_input": (2, 1, 224, 224),
        "vision_trunk": (2, 256, 1280),
        "vision": (2, 256, 1024),
        "depth_trunk": (2, 196, 384),
        "depth": (2, 196, 1024),
    }
    report = []
    for key, shape in expected_shapes.items():
        a, b = ours[key], theirs[key]
        assert a.shape == b.shape == shape, (key, a.shape, b.shape)
        diff = (a - b).abs()
        report.append(f"{key}: max |diff| {float(diff.max()):.2e}, max |ref| {float(b.abs().max()):.2e}")
    print("\n".join(report))
    for key in expected_shapes:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-5, msg=lambda m, k=key: f"{k}: {m}")
