"""SAM2 as SAM2: built from the sam2 package's configs, official checkpoints loaded strictly,
tubes tracked through memory on every frame, the [Obj] prompt learning a tube, and the
sam2_pretrain stage feeding the 4D-LLM's mask path."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from psg4d.errors import CheckpointError, ConfigError
from psg4d.model.mask_decoder import MaskDecoderConfig, build_mask_decoder
from psg4d.model.sam2_prompts import sample_spatial_prompts
from psg4d.model.sam2_build import SAM2_SIZES, Sam2Settings, build_sam2_tubes, load_sam2_model_checkpoint
from psg4d.model.sam2_tubes import NO_OBJECT_LOGIT, Sam2Tubes


def test_built_from_the_package_config_with_sam2_modules():
    from sam2.modeling.backbones.hieradet import Hiera
    from sam2.modeling.memory_attention import MemoryAttention
    from sam2.modeling.memory_encoder import MemoryEncoder
    from sam2.modeling.sam2_base import SAM2Base

    dec = build_mask_decoder(MaskDecoderConfig.sam2_tiny())
    assert isinstance(dec, Sam2Tubes) and isinstance(dec.sam, SAM2Base)
    assert isinstance(dec.sam.image_encoder.trunk, Hiera)
    assert isinstance(dec.sam.memory_attention, MemoryAttention)
    assert isinstance(dec.sam.memory_encoder, MemoryEncoder)
    assert dec.sam.use_high_res_features_in_sam and dec.has_presence_head
    feats = dec.frame_features(torch.rand(3, 3, 64, 64))
    # the decoder's map at stride 16 of SAM2's 128-px input, high-resolution features at strides 4 and 8
    assert feats.feat_sizes == [(32, 32), (16, 16), (8, 8)]
    with pytest.raises(ConfigError, match="size"):
        Sam2Settings(size="huge")
    with pytest.raises(ConfigError, match="cannot compose"):
        build_mask_decoder(MaskDecoderConfig(kind="sam2", sam2=Sam2Settings(config="configs/nope.yaml")))


@pytest.fixture(scope="module")
def official_layout_checkpoint(tmp_path_factory):
    """A miniature SAM2 checkpoint written by the sam2 package's own builder (random weights)."""
    from sam2.build_sam import build_sam2

    overrides = [*SAM2_SIZES["tiny"], "++model.image_size=128"]
    model = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=None, device="cpu",
                       hydra_overrides_extra=overrides, apply_postprocessing=False)
    path = tmp_path_factory.mktemp("sam2") / "sam2.1_hiera_mini.pt"
    torch.save({"model": model.state_dict()}, path)
    return path, model.state_dict()


def test_official_layout_checkpoint_loads_strictly_and_freezes_the_trunk(official_layout_checkpoint):
    path, sd = official_layout_checkpoint
    cfg = dataclasses.replace(MaskDecoderConfig.sam2_tiny(), pretrained=True, weights_path=str(path),
                              sam2=Sam2Settings(frozen=["image_encoder.trunk"]))
    dec = build_mask_decoder(cfg)
    own = dec.sam.state_dict()
    assert set(own) == set(sd)
    assert all(torch.equal(own[k], sd[k]) for k in sd)
    trunk = [p.requires_grad for n, p in dec.sam.named_parameters() if n.startswith("image_encoder.trunk.")]
    rest = [p.requires_grad for n, p in dec.sam.named_parameters() if not n.startswith("image_encoder.trunk.")]
    assert trunk and not any(trunk) and all(rest)


def test_a_wrong_or_missing_key_is_refused_by_name(official_layout_checkpoint, tmp_path):
    path, sd = official_layout_checkpoint
    renamed = dict(sd)
    renamed["sam_mask_decoder.iou_token.weight_renamed"] = renamed.pop("sam_mask_decoder.iou_token.weight")
    bad = tmp_path / "renamed.pt"
    torch.save({"model": renamed}, bad)
    sam = build_sam2_tubes(Sam2Settings()).sam
    with pytest.raises(CheckpointError) as e:
        load_sam2_model_checkpoint(sam, bad)
    msg = str(e.value)
    assert "missing ['sam_mask_decoder.iou_token.weight']" in msg
    assert "unexpected ['sam_mask_decoder.iou_token.weight_renamed']" in msg
    with pytest.raises(ConfigError, match="frozen needs pretrained"):
        build_sam2_tubes(Sam2Settings(frozen=["image_encoder.trunk"]))
    with pytest.raises(ConfigError, match="names no SAM2 parameter"):
        build_sam2_tubes(Sam2Settings(frozen=["image_encoder.trunks"]), weights_path=str(path), pretrained=True)


def test_tubes_cover_every_frame_of_each_clip_and_absent_frames_are_gated():
    torch.manual_seed(0)
    dec = build_sam2_tubes(Sam2Settings()).eval()
    rgb = torch.rand(2, 5, 3, 48, 40)  # two clips; masks come out at the frames' size
    feats = dec.frame_features(rgb)
    assert feats.num_videos == 2 and feats.num_frames == 5
    with torch.no_grad():
        out = dec.decode(feats, torch.randn(3, dec.dim), videos=torch.tensor([0, 1, 1]))
    assert out.mask_logits.shape == (3, 5, 48, 40) and out.object_logits.shape == (3, 5)
    gated = dec.gate_absent(out)
    absent = out.object_logits < 0
    assert torch.all(gated[absent] == NO_OBJECT_LOGIT)
    assert torch.equal(gated[~absent], out.mask_logits[~absent])
    # an object of clip 0 reads clip 0's frames only
    prompts = torch.randn(3, dec.dim)
    rgb2 = rgb.clone()
    rgb2[1] = torch.rand_like(rgb2[1])
    with torch.no_grad():
        first = dec.decode(feats, prompts, videos=torch.tensor([0, 1, 1]))
        again = dec.decode(dec.frame_features(rgb2), prompts, videos=torch.tensor([0, 1, 1]))
    assert torch.allclose(first.mask_logits[0], again.mask_logits[0], atol=1e-5)
    assert not torch.allclose(first.mask_logits[1], again.mask_logits[1], atol=1e-3)


def test_spatial_prompts_are_drawn_from_the_mask():
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[0, 4:10, 20:30] = True
    masks[1, 16:32, 0:8] = True
    g = torch.Generator().manual_seed(0)
    pts = sample_spatial_prompts(masks, image_size=128, kind="points", generator=g)
    pos = pts.labels == 1
    assert pos.any(dim=1).all()
    xy = (pts.points[pos] + 0.5) / 4 - 0.5  # back to mask pixels
    owner = torch.nonzero(pos)[:, 0]
    for (x, y), i in zip(xy.round().long().tolist(), owner.tolist()):
        assert masks[i, y, x]
    box = sample_spatial_prompts(masks, image_size=128, kind="box", generator=g).boxes / 4
    assert torch.allclose(box[0], torch.tensor([20.0, 4.0, 30.0, 10.0]), atol=1.6)
    assert sample_spatial_prompts(masks, image_size=128, kind="mask").masks.shape == (2, 1, 32, 32)
    with pytest.raises(ValueError):
        sample_spatial_prompts(masks, image_size=128, kind="scribble")


def _moving_square_clip(t: int = 4, size: int = 64, absent: int = 2):
    """A red square moving right on grey noise; frame ``absent`` has no square."""
    g = torch.Generator().manual_seed(0)
    rgb = 0.4 + 0.1 * torch.rand(t, 3, size, size, generator=g)
    masks = torch.zeros(t, size, size, dtype=torch.bool)
    for f in range(t):
        if f == absent:
            continue
        x = 8 + 8 * f
        masks[f, 20:36, x : x + 16] = True
        rgb[f, :, 20:36, x : x + 16] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
    return rgb, masks


def test_overfit_four_frames_through_an_obj_prompt():
    """The [Obj] path (a learned prompt vector, no spatial prompt) learns a 4-frame tube with an
    absent frame: IoU >= 0.9 where the object is, an empty mask where it is not."""
    from psg4d.model.losses import LossConfig, mask_losses

    torch.manual_seed(0)
    dec = build_sam2_tubes(Sam2Settings())
    rgb, masks = _moving_square_clip()
    prompt = torch.nn.Parameter(torch.randn(1, dec.dim) * 0.1)
    opt = torch.optim.AdamW([*dec.parameters(), prompt], lr=2e-3)
    loss_cfg = LossConfig(dice_weight=5.0, focal_alpha=-1.0)
    for _ in range(60):
        out = dec.decode(dec.frame_features(rgb), prompt)
        loss = mask_losses(out.mask_logits, out.iou_pred, masks[None], cfg=loss_cfg,
                           object_logits=out.object_logits)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    dec.eval()
    with torch.no_grad():
        out = dec.decode(dec.frame_features(rgb), prompt)
    pred = dec.gate_absent(out)[0] > 0  # [T, H, W]
    for f in range(4):
        if masks[f].any():
            iou = (pred[f] & masks[f]).sum() / (pred[f] | masks[f]).sum()
            assert iou >= 0.9, (f, float(iou))
        else:
            assert not pred[f].any()


def test_promptable_objective_trains_and_initialises_the_llm_stage(tmp_path):
    """sam2_pretrain lowers its loss on a fixed batch; a 4D-LLM built from its checkpoint starts
    with exactly those SAM2 weights."""
    from test_model_psg4d import make_sample, tiny_config

    from psg4d.model.psg4d_llm import PSG4DModel
    from psg4d.train.stages import STAGE_KINDS

    cfg = tiny_config(mask_decoder=MaskDecoderConfig.sam2_tiny(), supervise_all_objects=True,
                      mask_prompts_per_object=1)
    ((dotted, value),) = STAGE_KINDS["sam2_pretrain"].model_settings
    assert dotted == "transfer.objective"
    cfg.transfer = dataclasses.replace(cfg.transfer, objective=value)
    torch.manual_seed(0)
    model = PSG4DModel.from_config(cfg)
    samples = [make_sample(1, size=48), make_sample(2, size=48)]
    batch = model.collate(samples)
    assert [m.shape[0] for m in batch["object_masks"]] == [3, 3]
    sam_params = [p for n, p in model.named_parameters() if n.startswith("mask_decoder.sam.")]
    opt = torch.optim.AdamW(sam_params, lr=2e-3)
    model.eval()
    with torch.no_grad():
        before = float(model(**batch)["loss"])
    model.train()
    for _ in range(15):
        out = model(**batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        after = float(model(**batch)["loss"])
    assert after < 0.8 * before, (before, after)
    # everything but SAM2 is idle in this stage (the loop freezes it without complaint)
    assert all(n.startswith("mask_decoder.sam.") or n in model.unused_parameters()
               for n, _ in model.named_parameters())
    path = tmp_path / "sam2_pretrain"
    model.save_pretrained(path)
    llm = PSG4DModel.from_pretrained(path)
    for (n, p), (_, q) in zip(model.mask_decoder.sam.named_parameters(), llm.mask_decoder.sam.named_parameters()):
        assert torch.equal(p, q), n


def test_every_object_gets_a_mask_target_and_each_object_a_prompt():
    """Objects in no triplet are teacher-forced after the text (not learned as text); training
    decodes one mention of every object."""
    from test_model_psg4d import make_sample, tiny_config

    from psg4d.model.batching import per_object_prompts
    from psg4d.model.psg4d_llm import PSG4DModel
    from psg4d.model.tokens import OBJ_TOKEN

    sample = make_sample(0, n_obj=4)
    sample.graph.relations = [r for r in sample.graph.relations if r.object_id != 3]  # object 3: no triplet
    cfg = tiny_config(supervise_all_objects=True)
    model = PSG4DModel.from_config(cfg)
    batch = model.collate([sample])
    ids = batch["target_ids"][0].tolist()
    eos = ids.index(model.prompt.ids.eos)
    tail = ids[eos + 1:]
    assert tail == model.prompt.text_ids(f"; {sample.graph.objects[3].category} {OBJ_TOKEN}")
    assert batch["obj_ids"][0][-1] == 3 and batch["mask_targets"][0].shape[0] == len(batch["obj_ids"][0])
    assert batch["target_loss_mask"][0][eos + 1:].sum() == 0 and batch["target_loss_mask"][0][: eos + 1].all()
    off = model.collator.__class__(config=tiny_config(), prompt=model.prompt, with_semantic=False)([sample])
    assert 3 not in off["obj_ids"][0]

    torch.manual_seed(0)
    keep = torch.ones(7, dtype=torch.bool)
    obj_ids = [0, 1, 0, 2, 1, 0, 3]
    for _ in range(5):
        chosen = per_object_prompts(keep, obj_ids, 1)
        assert sorted(obj_ids[i] for i in torch.nonzero(chosen).flatten().tolist()) == [0, 1, 2, 3]
    assert int(per_object_prompts(keep, obj_ids, 2).sum()) == 6


def _two_category_clip(t: int = 4, size: int = 64):
    """Frames with a red square (category 0) and a blue square (category 1) at positions
    that change every frame, on grey noise; per-pixel categories (2 = unlabelled)."""
    g = torch.Generator().manual_seed(1)
    rgb = 0.4 + 0.1 * torch.rand(t, 3, size, size, generator=g)
    semantic = torch.full((t, size, size), 2, dtype=torch.long)
    colours = (torch.tensor([0.9, 0.1, 0.1]), torch.tensor([0.1, 0.2, 0.9]))
    for f in range(t):
        for c, colour in enumerate(colours):
            y, x = (int(v) for v in torch.randint(0, size - 16, (2,), generator=g))
            rgb[f, :, y : y + 16, x : x + 16] = colour[:, None, None]
            semantic[f, y : y + 16, x : x + 16] = c
    return rgb, semantic


def test_semantic_head_teaches_sam2s_own_features_where_each_category_is():
    """SAM2's semantic head (mask_decoder.semantic_loss_weight) reads SAM2's own stride-8/16
    features; trained with the dense category loss they come to tell the categories apart."""
    from psg4d.model.losses import segmentation_loss

    torch.manual_seed(0)
    dec = build_sam2_tubes(Sam2Settings(image_size=64), num_classes=3)
    assert {n.split(".")[0] for n, _ in dec.named_parameters()} == {"sam", "slot_embed", "time_proj", "semantic_head"}
    rgb, semantic = _two_category_clip()
    logits = dec.semantic_logits(dec.frame_features(rgb))
    assert logits.shape == (4, 3, 8, 8)  # stride 8 of SAM2's 64-px input

    def accuracy() -> float:
        with torch.no_grad():
            pred = dec.semantic_logits(dec.frame_features(rgb)).argmax(1)  # [T, 8, 8]
        # a cell counts where one category covers all of it
        cells = torch.nn.functional.one_hot(semantic, 3).permute(0, 3, 1, 2).float()
        cover = torch.nn.functional.avg_pool2d(cells, 8)  # [T, 3, 8, 8]
        full, cls = cover.max(1)
        objects = (full == 1) & (cls < 2)
        return float((pred[objects] == cls[objects]).float().mean())

    opt = torch.optim.AdamW(dec.parameters(), lr=3e-3)
    for _ in range(40):
        loss = segmentation_loss(dec.semantic_logits(dec.frame_features(rgb)), semantic)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert accuracy() >= 0.9
    # the region prompt of an object named "category 0" covers the red square, not the blue one
    feats = dec.frame_features(rgb)
    region = dec.region_masks(feats, torch.tensor([[1.0, 0.0]]), videos=torch.tensor([0]))  # [1, T, 8, 8]
    assert region.shape == (1, 4, 8, 8) and not region.requires_grad
    cells = torch.nn.functional.avg_pool2d(torch.nn.functional.one_hot(semantic, 3).permute(0, 3, 1, 2).float(), 8)
    red, blue = cells[:, 0] == 1, cells[:, 1] == 1
    assert float((region[0][red] > 0).float().mean()) >= 0.9
    assert float((region[0][blue] < 0).float().mean()) >= 0.9
    with pytest.raises(ConfigError, match="only with kind: sam2"):
        MaskDecoderConfig(kind="fused", semantic_loss_weight=1.0)
    with pytest.raises(ConfigError, match="region_prompt needs the semantic head"):
        MaskDecoderConfig(kind="sam2", region_prompt=True)


def test_semantic_loss_joins_both_sam2_stages():
    """With semantic_loss_weight > 0 both the sam2_pretrain and the 4D-LLM objectives report and
    train SAM2's semantic head; it is not idle in sam2_pretrain; region prompts reach SAM2."""
    from test_model_psg4d import make_sample, tiny_config

    from psg4d.model.psg4d_llm import PSG4DModel

    md = dataclasses.replace(MaskDecoderConfig.sam2_tiny(), semantic_loss_weight=1.0, region_prompt=True)
    cfg = tiny_config(mask_decoder=md, supervise_all_objects=True, mask_prompts_per_object=1,
                      obj_cls_loss_weight=1.0)
    torch.manual_seed(0)
    for objective in ("llm", "masks"):
        cfg.transfer = dataclasses.replace(cfg.transfer, objective=objective)
        model = PSG4DModel.from_config(cfg).train()
        batch = model.collate([make_sample(1, size=48), make_sample(2, size=48)])
        assert batch["semantic"] is not None
        out = model(**batch)
        assert float(out["loss_sam2_seg"]) > 0
        out["loss"].backward()
        head = model.mask_decoder.semantic_head
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters()), objective
        assert not any(n.startswith("mask_decoder.semantic_head.") for n in model.unused_parameters())
        if objective == "llm":  # the region prompt reaches SAM2 through its mask-prompt path
            down = model.mask_decoder.sam.sam_prompt_encoder.mask_downscaling
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in down.parameters())
