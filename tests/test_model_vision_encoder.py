"""Scene encoder: shapes of every input path, gradients, normalisation, merging."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from psg4d.errors import ConfigError
from psg4d.model.encoder import EncoderConfig, SceneEncoder, build_encoder
from psg4d.model.fusion import GatedFusion
from psg4d.model.merging import TokenMerger, bipartite_merge


@pytest.fixture(scope="module")
def encoder() -> SceneEncoder:
    torch.manual_seed(0)
    return build_encoder(EncoderConfig())


def _clip(b=2, t=4, s=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    rgb = torch.rand(b, t, 3, s, s, generator=g)
    depth = 0.5 + 4 * torch.rand(b, t, 1, s, s, generator=g)
    return rgb, depth


def test_rgbd_shapes(encoder):
    rgb, depth = _clip()
    out = encoder(rgb, depth)
    assert out.tokens.shape == (2, 64, 64)  # 4 frames x 4x4 grid
    assert out.dense.shape == (2, 4, 64, 16, 16)
    assert out.rgb_feats.shape == out.fused.shape == (2, 4, 256, 64)
    assert out.depth_feats is not None and out.depth_feats.shape == (2, 4, 256, 64)
    assert out.token_frames.shape == (2, 64)
    # dense is the fused features laid out on the grid
    assert torch.equal(out.dense[1, 2, :, 3, 5], out.fused[1, 2, 3 * 16 + 5])


def test_rgb_only_path_skips_depth(encoder):
    rgb, depth = _clip()
    out = encoder(rgb, None)
    assert out.depth_feats is None
    assert out.tokens.shape == (2, 64, 64)
    # the documented fallback: fused = fusion norm of the RGB features alone
    torch.testing.assert_close(out.fused, encoder.fusion.norm(out.rgb_feats))
    with_depth = encoder(rgb, depth)
    assert not torch.allclose(with_depth.fused, out.fused)


def test_depth_feats_override_replaces_depth_branch(encoder):
    rgb, depth = _clip()
    feats = torch.randn(2, 4, 256, 64)
    a = encoder(rgb, depth, depth_feats=feats)
    b = encoder(rgb, None, depth_feats=feats)
    assert torch.equal(a.depth_feats, feats)
    torch.testing.assert_close(a.fused, b.fused)
    assert not torch.allclose(a.fused, encoder(rgb, depth).fused)
    with pytest.raises(ValueError, match="depth_feats"):
        encoder(rgb, None, depth_feats=torch.randn(2, 4, 100, 64))


def test_other_input_size_is_resized(encoder):
    rgb, depth = _clip(b=1, t=2, s=48)
    out = encoder(rgb, depth)
    assert out.dense.shape == (1, 2, 64, 16, 16)


def test_gradients_reach_both_branches():
    torch.manual_seed(0)
    enc = build_encoder(EncoderConfig())
    rgb, depth = _clip(b=1, t=2)
    out = enc(rgb, depth)
    (out.tokens.square().mean() + out.dense.square().mean()).backward()
    for name in ("rgb_branch", "depth_branch", "fusion", "merger"):
        grads = [p.grad for p in getattr(enc, name).parameters()]
        assert all(g is not None for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, name


def test_depth_normalisation_is_disparity(encoder):
    d = torch.tensor([2.0, 0.0, float("nan"), 0.05]).view(1, 1, 2, 2).expand(1, 1, 2, 2)
    enc = build_encoder(EncoderConfig(image_size=2))
    out = enc.normalize_depth(d)
    expected = (torch.tensor([0.5, 0.0, 0.0, 10.0]).view(1, 1, 2, 2) - 0.5) / 0.5
    torch.testing.assert_close(out, expected)
    rgb = torch.ones(1, 3, 64, 64)
    n = encoder.normalize_rgb(rgb)
    torch.testing.assert_close(n[0, :, 0, 0], (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225]))


def test_config_errors():
    with pytest.raises(ConfigError, match="tiny"):
        build_encoder(EncoderConfig(backbone="resnet"))
    with pytest.raises(ConfigError, match="options"):
        EncoderConfig.preset("huge")
    enc = build_encoder(EncoderConfig(use_depth=False))
    assert enc.depth_branch is None
    rgb, depth = _clip(b=1, t=2)
    assert enc(rgb, depth).depth_feats is None


def test_merging_keeps_time_order_and_budget():
    torch.manual_seed(0)
    merger = TokenMerger(dim=16, grid=2, max_tokens=10)
    fused = torch.randn(2, 6, 16, 16)  # 6 frames on a 4x4 grid -> 24 pooled tokens
    tokens, frames = merger(fused, (4, 4))
    assert tokens.shape == (2, 10, 16)
    assert (frames[:, 1:] >= frames[:, :-1]).all()
    assert frames.min() >= 0 and frames.max() <= 5
    # under budget: one token per cell and frame, integer frames
    merger_big = TokenMerger(dim=16, grid=2, max_tokens=100)
    tokens, frames = merger_big(fused, (4, 4))
    assert tokens.shape == (2, 24, 16)
    assert torch.equal(frames[0], torch.arange(6.0).repeat_interleave(4))


def test_static_content_merges_first():
    # Frames 0-3 identical, frames 4-5 different: merging must collapse the static part.
    torch.manual_seed(0)
    static = torch.randn(1, 1, 4, 8).expand(1, 4, 4, 8)
    moving = torch.randn(1, 2, 4, 8) * 3
    fused = torch.cat([static, moving], dim=1)  # [1, 6, 4, 8] on a 2x2 grid
    merger = TokenMerger(dim=8, grid=2, max_tokens=12)
    _, frames = merger(fused, (2, 2))
    # all 8 tokens of frames 4-5 survive unmerged (integer frames 4 and 5)
    assert int(((frames == 4) | (frames == 5)).sum()) == 8


@settings(max_examples=25, deadline=None)
@given(m=st.integers(2, 20), r=st.integers(1, 10), seed=st.integers(0, 1000))
def test_bipartite_merge_conserves_mass(m, r, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, m, 5, generator=g)
    size = torch.randint(1, 4, (2, m), generator=g).float()
    frames = torch.rand(2, m, generator=g) * 8
    x2, s2, f2 = bipartite_merge(x, size, frames, r)
    assert x2.shape[1] == m - min(r, (m + 1) // 2)
    torch.testing.assert_close(s2.sum(1), size.sum(1))
    torch.testing.assert_close((x2 * s2[..., None]).sum(1), (x * size[..., None]).sum(1), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close((f2 * s2).sum(1), (frames * size).sum(1), rtol=1e-4, atol=1e-4)


def test_fusion_gates_are_input_dependent():
    torch.manual_seed(0)
    fusion = GatedFusion(dim=16)
    rgb, depth = torch.randn(2, 9, 16), torch.randn(2, 9, 16)
    out = fusion(rgb, depth)
    assert out.shape == (2, 9, 16)
    # swapping the depth of the two samples changes each sample's output
    swapped = fusion(rgb, depth.flip(0))
    assert not torch.allclose(out, swapped)
