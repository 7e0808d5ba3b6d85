"""Scene encoder: shapes of every input path, gradients, normalisation, merging."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from psg4d.data.schema import Video4D
from psg4d.errors import ConfigError, DataError
from psg4d.model.encoder import EncoderConfig, SceneEncoder, build_encoder, disparity_scale_of
from psg4d.model.fusion import GatedTokenFusion
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
    # the inverse-metres scheme has no camera: a clip's disparity scale changes nothing
    torch.testing.assert_close(enc.normalize_depth(d, torch.tensor([40.0])), expected)
    rgb = torch.ones(1, 3, 64, 64)
    n = encoder.normalize_rgb(rgb)
    torch.testing.assert_close(n[0, :, 0, 0], (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225]))


def _omnivore(disparity_px: float) -> float:
    """Omnivore's DepthNorm(max_depth=75, clamp) + Normalize(0.0418, 0.0295), by hand."""
    return (min(max(disparity_px, 0.01), 75.0) / 75.0 - 0.0418) / 0.0295


def test_omnivore_disparity_hand_computed():
    enc = build_encoder(EncoderConfig(depth_norm="omnivore_disparity", image_size=2))
    d = torch.tensor([1.0, 2.0, 0.5, 60.0]).view(1, 1, 2, 2)
    out = enc.normalize_depth(d, torch.tensor([518.9 * 0.075]))
    # 1 m -> 38.9 px, 2 m -> 19.5 px; 0.5 m -> 77.8 px clamped to 75; 60 m clipped to 50 m -> 0.78 px
    expected = [_omnivore(38.9175), _omnivore(19.45875), _omnivore(75.0), _omnivore(38.9175 / 50)]
    torch.testing.assert_close(out.flatten(), torch.tensor(expected))
    assert abs(float(out[0, 0, 0, 0]) - 16.17) < 0.01  # what the frozen trunk sees at 1 m (not 1.0)
    assert float(out[0, 0, 1, 0]) == pytest.approx((1 - 0.0418) / 0.0295, rel=1e-6)
    # no scale: the documented default camera (Kinect v1 fx 518.857901 px, baseline 0.075 m)
    default = enc.normalize_depth(torch.ones(1, 1, 2, 2))
    torch.testing.assert_close(default, torch.full((1, 1, 2, 2), _omnivore(518.857901 * 0.075)))
    # per-image scales
    two = enc.normalize_depth(torch.ones(2, 1, 2, 2), torch.tensor([10.0, 20.0]))
    torch.testing.assert_close(two[:, 0, 0, 0], torch.tensor([_omnivore(10.0), _omnivore(20.0)]))


def test_omnivore_invalid_depth_is_far():
    enc = build_encoder(EncoderConfig(depth_norm="omnivore_disparity", image_size=2))
    d = torch.tensor([0.0, float("inf"), float("nan"), -1.0]).view(1, 1, 2, 2)
    out = enc.normalize_depth(d, torch.tensor([38.9]))
    # disparity 0 before DepthNorm, whose floor of 0.01 px then applies
    torch.testing.assert_close(out, torch.full((1, 1, 2, 2), _omnivore(0.01)))
    assert torch.isfinite(out).all()


def test_disparity_scale_per_clip_through_forward():
    torch.manual_seed(0)
    enc = build_encoder(EncoderConfig(depth_norm="omnivore_disparity"))
    rgb, depth = _clip(b=2, t=2)
    scale = torch.tensor([20.0, 60.0])
    both = enc(rgb, depth, disparity_scale=scale)
    for i in range(2):
        alone = enc(rgb[i : i + 1], depth[i : i + 1], disparity_scale=scale[i : i + 1])
        torch.testing.assert_close(both.depth_feats[i], alone.depth_feats[0], rtol=1e-4, atol=1e-5)
    default = torch.full((2,), 518.857901 * 0.075)
    torch.testing.assert_close(enc(rgb, depth).depth_feats, enc(rgb, depth, disparity_scale=default).depth_feats)
    assert not torch.allclose(both.depth_feats, enc(rgb, depth).depth_feats)
    with pytest.raises(ValueError, match="disparity_scale"):
        enc(rgb, depth, disparity_scale=torch.ones(2, 2))


def test_disparity_scale_of_video():
    cfg = EncoderConfig.full()
    rgb = np.zeros((3, 480, 640, 3), np.uint8)
    k = np.array([[600.0, 0, 320], [0, 601.0, 240], [0, 0, 1]])
    assert disparity_scale_of(Video4D(rgb=rgb), cfg) == pytest.approx(518.857901 * 0.075)
    assert disparity_scale_of(Video4D(rgb=rgb, intrinsics=k), cfg) == pytest.approx(600.0 * 0.075)
    v = Video4D(rgb=rgb, intrinsics=k, depth_baseline=0.095).validate()
    assert disparity_scale_of(v, cfg) == pytest.approx(600.0 * 0.095)
    assert disparity_scale_of(Video4D(rgb=rgb, depth_baseline=0.05), cfg) == pytest.approx(518.857901 * 0.05)
    assert v.slice(1, 2).depth_baseline == 0.095
    with pytest.raises(DataError, match="depth_baseline"):
        Video4D(rgb=rgb, depth_baseline=0.0).validate()
    with pytest.raises(DataError, match="depth_baseline"):
        Video4D(rgb=rgb, depth_baseline=float("nan")).validate()
    with pytest.raises(DataError, match="intrinsics"):
        disparity_scale_of(Video4D(rgb=rgb, intrinsics=np.zeros((3, 3)), video_id="clip"), cfg)


def test_config_errors():
    with pytest.raises(ConfigError, match="tiny"):
        build_encoder(EncoderConfig(backbone="resnet"))
    with pytest.raises(ConfigError, match="inverse_metres"):
        EncoderConfig(depth_norm="metres")
    with pytest.raises(ConfigError, match="default_baseline_m"):
        EncoderConfig(default_baseline_m=0.0)
    assert EncoderConfig.full().depth_norm == "omnivore_disparity"
    assert EncoderConfig.efficientnet_lite0().depth_norm == "inverse_metres"
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
    fusion = GatedTokenFusion(dim=16)
    rgb, depth = torch.randn(2, 9, 16), torch.randn(2, 9, 16)
    out = fusion(rgb, depth)
    assert out.shape == (2, 9, 16)
    # swapping the depth of the two samples changes each sample's output
    swapped = fusion(rgb, depth.flip(0))
    assert not torch.allclose(out, swapped)
