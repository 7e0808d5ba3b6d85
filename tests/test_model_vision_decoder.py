"""Mask-tube decoder (SAM2 modules): shapes, chunking, memory path, SAM2 checkpoint layout."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from psg4d.errors import CheckpointError, ConfigError
from psg4d.model.mask_decoder import (
    MaskDecoderConfig,
    TubeDecoder,
    build_mask_decoder,
    load_sam2_checkpoint,
    upsample_to,
)


@pytest.fixture(scope="module")
def decoder() -> TubeDecoder:
    torch.manual_seed(0)
    return build_mask_decoder(MaskDecoderConfig()).eval()


def test_shapes(decoder):
    dense = torch.randn(5, 64, 16, 16)
    logits, iou = decoder(dense, torch.randn(3, 64))
    assert logits.shape == (3, 5, 64, 64)  # 4x the dense map
    assert iou.shape == (3, 5)
    assert ((iou >= 0) & (iou <= 1)).all()  # SAM2 sigmoid IoU head
    # non-square / other map sizes work too (positional encoding follows the map)
    logits, _ = decoder(torch.randn(2, 64, 8, 12), torch.randn(1, 64))
    assert logits.shape == (1, 2, 32, 48)


def test_no_objects(decoder):
    logits, iou = decoder(torch.randn(4, 64, 16, 16), torch.zeros(0, 64))
    assert logits.shape == (0, 4, 64, 64) and iou.shape == (0, 4)


def test_prompts_and_frames_matter(decoder):
    torch.manual_seed(1)
    dense = torch.randn(3, 64, 16, 16)
    logits, _ = decoder(dense, torch.randn(2, 64))
    assert not torch.allclose(logits[0], logits[1])  # different prompts, different masks
    assert not torch.allclose(logits[0, 0], logits[0, 1])  # different frames


def test_chunked_decoding_matches_one_call():
    torch.manual_seed(0)
    one = build_mask_decoder(MaskDecoderConfig()).eval()
    chunked = build_mask_decoder(MaskDecoderConfig(max_batch=4)).eval()
    chunked.load_state_dict(one.state_dict())
    dense, prompts = torch.randn(3, 64, 16, 16), torch.randn(3, 64)
    with torch.no_grad():
        a, b = one(dense, prompts), chunked(dense, prompts)
    torch.testing.assert_close(a[0], b[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a[1], b[1], rtol=1e-4, atol=1e-4)


def test_memory_attention_path():
    torch.manual_seed(0)
    dec = build_mask_decoder(MaskDecoderConfig(memory_layers=1, memory_dim=32, memory_ffn_dim=64)).eval()
    dense = torch.randn(4, 64, 16, 16)
    logits, iou = dec(dense, torch.randn(2, 64))
    assert logits.shape == (2, 4, 64, 64)
    # frame 3 sees frames 1-2: changing frame 0 leaves frame 3's propagated map unchanged
    with torch.no_grad():
        base = dec.propagate(dec.input_proj(dense))
        dense2 = dense.clone()
        dense2[0] += 1.0
        moved = dec.propagate(dec.input_proj(dense2))
    torch.testing.assert_close(base[3], moved[3])
    assert not torch.allclose(base[1], moved[1])


def test_gradients_reach_prompts_and_maps(decoder):
    dec = build_mask_decoder(MaskDecoderConfig())
    dense = torch.randn(2, 64, 16, 16, requires_grad=True)
    prompts = torch.randn(2, 64, requires_grad=True)
    logits, iou = dec(dense, prompts)
    (logits.mean() + iou.mean()).backward()
    assert dense.grad.abs().sum() > 0 and prompts.grad.abs().sum() > 0


def test_upsample_to():
    x = torch.randn(2, 3, 16, 16)
    assert upsample_to(x, (40, 60)).shape == (2, 3, 40, 60)
    assert upsample_to(torch.zeros(0, 3, 16, 16), (8, 8)).shape == (0, 3, 8, 8)


def test_config_errors():
    with pytest.raises(ConfigError, match="divisible"):
        build_mask_decoder(MaskDecoderConfig(transformer_dim=60))
    with pytest.raises(ConfigError, match="weights_path"):
        build_mask_decoder(MaskDecoderConfig(pretrained=True))


def _sam2_like_checkpoint(path, decoder: TubeDecoder, *, extra_dim: int):
    """A checkpoint in SAM2's layout: prefixed parts + image-encoder and skip-conv tensors."""
    sd = {}
    for prefix, mod in (("sam_mask_decoder.", decoder.mask_decoder), ("sam_prompt_encoder.", decoder.prompt_encoder)):
        sd.update({prefix + k: v.clone() for k, v in mod.state_dict().items()})
    if decoder.memory_attention is not None:
        sd.update({"memory_attention." + k: v.clone() for k, v in decoder.memory_attention.state_dict().items()})
    sd["sam_mask_decoder.conv_s0.weight"] = torch.randn(extra_dim // 8, extra_dim, 1, 1)
    sd["image_encoder.trunk.patch_embed.proj.weight"] = torch.randn(8, 3, 7, 7)
    sd["maskmem_tpos_enc"] = torch.randn(7, 1, 1, 64)
    torch.save({"model": sd}, path)


def test_sam2_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    cfg = MaskDecoderConfig(memory_layers=1, memory_dim=32, memory_ffn_dim=64)
    src = build_mask_decoder(cfg).eval()
    path = tmp_path / "sam2_hiera_test.pt"
    _sam2_like_checkpoint(path, src, extra_dim=64)
    torch.manual_seed(1)
    dst = build_mask_decoder(cfg).eval()
    report = load_sam2_checkpoint(dst, path)
    assert "sam_mask_decoder.conv_s0.weight" in report["skipped"]
    assert any(k.startswith("memory_attention.") for k in report["loaded"])
    assert "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix" in report["loaded"]
    for name in ("mask_decoder", "prompt_encoder", "memory_attention"):
        a, b = getattr(src, name).state_dict(), getattr(dst, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_sam2_checkpoint_mismatch_is_reported(tmp_path):
    torch.manual_seed(0)
    src = build_mask_decoder(MaskDecoderConfig(transformer_dim=32, num_heads=4))
    path = tmp_path / "sam2_small.pt"
    _sam2_like_checkpoint(path, src, extra_dim=32)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_sam2_checkpoint(build_mask_decoder(MaskDecoderConfig()), path)
    bad = tmp_path / "bad.pt"
    torch.save({"state": {}}, bad)
    with pytest.raises(CheckpointError, match="model"):
        load_sam2_checkpoint(build_mask_decoder(MaskDecoderConfig()), bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_sam2_checkpoint(build_mask_decoder(MaskDecoderConfig()), tmp_path / "missing.pt")


def test_full_size_on_meta_device():
    with torch.device("meta"):
        dec = build_mask_decoder(dataclasses.replace(MaskDecoderConfig.full(), pretrained=False))
    sam_parts = sum(p.numel() for m in (dec.mask_decoder, dec.prompt_encoder) for p in m.parameters())
    # SAM2's decoder + prompt encoder (without the two high-res skip convs, ~10k params): ~4.2M
    assert 4.0e6 < sam_parts < 4.4e6, sam_parts
    mem = sum(p.numel() for p in dec.memory_attention.parameters())
    assert 5.5e6 < mem < 6.2e6, mem  # SAM2 memory attention: 4 layers, ~5.9M


@pytest.mark.slow  # ~7 s: builds the real SAM2 hiera-t model
def test_real_sam2_checkpoint_layout_loads_into_full_decoder(tmp_path):
    """A state dict of the sam2 package's own SAM2 model (hiera-t, random init) fits ``full``."""
    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    sam = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=None, device="cpu", mode="eval")
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": sam.state_dict()}, path)
    dec = build_mask_decoder(dataclasses.replace(MaskDecoderConfig.full(), weights_path=str(path)))
    ours = dec.mask_decoder.state_dict()
    theirs = sam.sam_mask_decoder.state_dict()
    assert set(theirs) - set(ours) == {"conv_s0.weight", "conv_s0.bias", "conv_s1.weight", "conv_s1.bias"}
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    mem = dec.memory_attention.state_dict()
    assert all(torch.equal(v, sam.memory_attention.state_dict()[k]) for k, v in mem.items())


def test_bfloat16_end_to_end():
    from psg4d.model.encoder import EncoderConfig, build_encoder

    torch.manual_seed(0)
    enc = build_encoder(EncoderConfig()).to(torch.bfloat16)
    dec = build_mask_decoder(MaskDecoderConfig(memory_layers=1, memory_dim=32, memory_ffn_dim=64)).to(torch.bfloat16)
    out = enc(torch.rand(1, 2, 3, 64, 64), torch.rand(1, 2, 1, 64, 64) + 1)  # raw float32 inputs
    logits, iou = dec(out.dense[0], torch.randn(2, 64, dtype=torch.bfloat16))
    assert out.tokens.dtype == logits.dtype == torch.bfloat16
    assert torch.isfinite(logits.float()).all() and torch.isfinite(iou.float()).all()


def test_unused_prompt_encoder_parts_are_frozen(decoder):
    trainable = {n for n, p in decoder.prompt_encoder.named_parameters() if p.requires_grad}
    assert trainable == {"no_mask_embed.weight"}


def test_object_scores_with_pred_obj_scores():
    from psg4d.model.losses import mask_losses

    torch.manual_seed(0)
    dec = build_mask_decoder(MaskDecoderConfig(pred_obj_scores=True, pred_obj_scores_mlp=True))
    out = dec.decode(torch.randn(3, 64, 16, 16), torch.randn(2, 64))
    assert out.object_logits.shape == (2, 3)
    target = torch.zeros(2, 3, 64, 64, dtype=torch.bool)
    target[0, :, 10:20, 10:20] = True
    mask_losses(out.mask_logits, out.iou_pred, target, object_logits=out.object_logits)["total"].backward()
    # every trainable parameter takes part (what DistributedDataParallel needs)
    no_grad = [n for n, p in dec.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []
