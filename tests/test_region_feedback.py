"""Region feedback (model.region): the decoded tube of every [Obj] is read back into the LLM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from psg4d.errors import ConfigError
from psg4d.infer.predictor import Predictor, PredictorConfig
from psg4d.model.generation import SceneGraphGenerator
from psg4d.model.psg4d_llm import PSG4DModel
from psg4d.model.region import RegionConfig, insert_after, pool_regions, region_id, region_index
from test_infer_predictor import _compare_predictions
from test_model_psg4d import PREDS, generates_ground_truth, make_sample, overfit, tiny_config


def region_config(**kw):
    cfg = tiny_config()
    cfg.region = RegionConfig(enabled=True, **kw)
    return cfg


def strip(ids: list[int], labels: list[int], pad: int) -> tuple[list[int], list[int]]:
    n = len(ids)
    while n and ids[n - 1] == pad:
        n -= 1
    return ids[:n], labels[:n]


@pytest.fixture(scope="module")
def trained():
    """A tiny model with region feedback, overfitted until greedy generation writes the sample's graph."""
    torch.manual_seed(0)
    model = PSG4DModel.from_config(region_config(gold_prob=0.5))
    sample = make_sample(0)
    overfit(model, sample, steps=300, check_every=10, until=generates_ground_truth(sample), text_loss_below=0.1)
    return model.eval(), sample


def test_pool_regions_hand_computed():
    dense = torch.zeros(2, 1, 2, 2)
    dense[0, 0] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    dense[1, 0] = 7.0
    masks = torch.zeros(2, 2, 4, 4, dtype=torch.bool)
    masks[0, 0, :2, :2] = True  # object 0: the top-left cell in frame 0, absent in frame 1
    masks[1, :, :, 2:] = True  # object 1: the right half in both frames
    got = pool_regions(dense, masks)  # [N, T, C + 4]: mean under the mask, area, cx, cy, present
    expected = torch.tensor([
        [[1.0, 0.25, 0.25, 0.25, 1.0], [0.0, 0.0, 0.5, 0.5, 0.0]],
        [[3.0, 0.5, 0.75, 0.5, 1.0], [7.0, 0.5, 0.75, 0.5, 1.0]],
    ])
    torch.testing.assert_close(got, expected)
    assert pool_regions(dense, masks[:0]).shape == (0, 2, 5)
    with pytest.raises(ValueError, match="frames"):
        pool_regions(dense, masks[:, :1])


def test_region_ids_and_schedule():
    assert [region_index(torch.tensor(region_id(k))).item() for k in range(3)] == [0, 1, 2]
    assert insert_after([5, 9, 2, 9, 9], 9, [-1, -2]) == [5, 9, -1, 2, 9, -2, 9]
    ramp = RegionConfig(gold_prob=0.2, gold_ramp=10)
    assert [ramp.gold_share(n) for n in (0, 5, 10, 50)] == pytest.approx([1.0, 0.6, 0.2, 0.2])
    assert RegionConfig(gold_prob=0.3).gold_share(0) == 0.3
    for bad in ({"gold_prob": 1.5}, {"gold_ramp": -1}, {"dim": 0}):
        with pytest.raises(ConfigError, match="model.region"):
            RegionConfig(**bad)
    cfg = region_config()
    cfg.chain_prob = 0.5
    with pytest.raises(ConfigError, match="chain"):
        cfg.__post_init__()


def test_training_text_has_a_region_after_every_obj():
    torch.manual_seed(0)
    plain = PSG4DModel.from_config(tiny_config()).eval()
    torch.manual_seed(0)
    model = PSG4DModel.from_config(region_config()).eval()
    batch = model.collate([make_sample(0), make_sample(1)])
    with torch.no_grad():
        tf = model.teacher_forced(target_ids=batch["target_ids"], target_mask=batch["target_mask"], rgb=batch["rgb"],
                                  depth=batch["depth"], disparity_scale=batch["disparity_scale"],
                                  mask_targets=batch["mask_targets"], mask_valid=batch["mask_valid"])
        ref = plain.teacher_forced(target_ids=batch["target_ids"], target_mask=batch["target_mask"], rgb=batch["rgb"],
                                   depth=batch["depth"], disparity_scale=batch["disparity_scale"])
    obj = model.ids.obj
    numbered = []
    for b in range(2):
        ids, labels = tf.ids[b].tolist(), tf.labels[b].tolist()
        for i, t in enumerate(ids):
            if t == obj:
                assert ids[i + 1] < 0 and labels[i + 1] == -100  # given, never learned
            if t < 0:
                assert ids[i - 1] == obj
                numbered.append(int(region_index(torch.tensor(t))))
        # without the region positions (and the padding), ids and labels are the plain model's
        keep = [i for i, t in enumerate(ids) if t >= 0]
        assert strip([ids[i] for i in keep], [labels[i] for i in keep], model.ids.pad) == \
            strip(ref.ids[b].tolist(), ref.labels[b].tolist(), model.ids.pad)
    assert numbered == list(range(sum(len(m) for m in batch["mask_targets"])))  # numbered over the batch, in order


def test_teacher_forcing_reads_the_gold_tube_after_its_obj_and_not_before():
    torch.manual_seed(0)
    model = PSG4DModel.from_config(region_config()).eval()
    batch = model.collate([make_sample(0)])

    def logits(masks):
        with torch.no_grad():
            return model.teacher_forced(target_ids=batch["target_ids"], target_mask=batch["target_mask"],
                                        rgb=batch["rgb"], depth=batch["depth"],
                                        disparity_scale=batch["disparity_scale"], mask_targets=masks,
                                        mask_valid=batch["mask_valid"])
    gold = batch["mask_targets"]
    moved = [gold[0].clone()]
    moved[0][2] = torch.roll(moved[0][2], shifts=9, dims=-1)  # the third [Obj]'s tube moves
    a, again, b = logits(gold), logits([gold[0].clone()]), logits(moved)
    region_pos = torch.nonzero(a.ids[0] < 0).flatten()[2].item()  # the third region position
    torch.testing.assert_close(a.logits, again.logits, atol=0, rtol=0)  # same tube: same distribution
    torch.testing.assert_close(a.logits[0, :region_pos], b.logits[0, :region_pos], atol=0, rtol=0)
    assert (a.logits[0, region_pos] - b.logits[0, region_pos]).abs().max() > 1e-4


def test_training_mixes_gold_and_decoded_tubes(monkeypatch):
    torch.manual_seed(0)
    model = PSG4DModel.from_config(region_config(gold_prob=0.0, gold_ramp=0))
    batch = model.collate([make_sample(0), make_sample(1)])
    calls = []
    real = model.decoded_masks

    def spy(features, hidden):
        calls.append(hidden.shape[0])
        return real(features, hidden)

    monkeypatch.setattr(model, "decoded_masks", spy)
    model.train()
    out = model(**batch)
    assert torch.isfinite(out["loss"]) and calls == [len(m) for m in batch["mask_targets"]]  # decoded, every [Obj]
    assert int(model.region_forwards) == 1
    out["loss"].backward()
    assert model.region_encoder.out.weight.grad.abs().sum() > 0
    model.config.region.gold_prob = 1.0
    calls.clear()
    model(**batch)
    assert calls == []  # gold tubes: no decoding pass
    # in eval without gold tubes (diagnostics' teacher forcing) the regions are decoded
    model.eval()
    with torch.no_grad():
        model.teacher_forced(target_ids=batch["target_ids"], target_mask=batch["target_mask"], rgb=batch["rgb"],
                             depth=batch["depth"], disparity_scale=batch["disparity_scale"])
    assert calls == [len(m) for m in batch["mask_targets"]]


def test_next_token_changes_with_the_mask_and_only_then(trained):
    """The issue's test: the next token's distribution after ``subj [Obj] <region>`` moves when the
    region's mask changes, and is the same when the mask is the same."""
    model, sample = trained
    gen = SceneGraphGenerator(model)
    ctx = gen.encode_video(sample.video)
    tubes = torch.stack([torch.from_numpy(o.tube.to_dense()) for o in sample.graph.objects])  # [N, T, H, W]
    same_a, same_b, other = gen.add_regions(ctx, tubes[[0, 0, 1]])
    head = model.prompt.text_ids("person [Obj]")
    words = [model.prompt.text_ids(p)[:1] for p in PREDS]

    def dist(region):
        return np.array(gen.score_continuations(ctx, head + [region], words))

    a, a2, b = dist(same_a), dist(same_b), dist(other)
    np.testing.assert_array_equal(a, a2)
    assert np.abs(a - b).max() > 1e-3
    # the region is not a scored token: "person [Obj] <region> holding" costs what its words cost
    full = gen.score_continuations(ctx, [], [head + [same_a] + model.prompt.text_ids("holding")])[0]
    parts = gen.score_continuations(ctx, [], [head])[0] + gen.score_continuations(
        ctx, head + [same_a], [model.prompt.text_ids("holding")])[0]
    assert full == pytest.approx(parts, abs=1e-4)
    with pytest.raises(ValueError, match="region"):
        gen.score_continuations(ctx, [], [head + model.prompt.text_ids("holding")])


def test_generation_feeds_each_decoded_tube_and_scoring_agrees(trained, tmp_path):
    model, sample = trained
    gen = SceneGraphGenerator(model)
    ctx = gen.encode_video(sample.video)
    out = gen.generate(ctx, max_new_tokens=80)
    obj = model.ids.obj
    n_obj = out.token_ids.count(obj)
    assert n_obj == len(out.obj_regions) == out.obj_hidden.shape[0] > 0
    fed = out.context_ids
    assert [fed[i + 1] for i, t in enumerate(fed) if t == obj] == out.obj_regions  # a region after every [Obj]
    # what was fed is the region of the tube that [Obj]'s own hidden state decodes
    with torch.inference_mode():
        expected = model.region_embeddings(ctx.dense, model.decoded_masks(ctx.mask_features, out.obj_hidden))
    got = torch.stack([ctx.regions[int(region_index(torch.tensor(r)))] for r in out.obj_regions])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # scoring the whole text decodes each [Obj]'s region as generation did: the greedy log-probability
    fresh = gen.encode_video(sample.video)
    assert gen.score_texts(fresh, [], [out.token_ids])[0] == pytest.approx(sum(out.step_logprobs), abs=1e-4)
    # one pass reads empty tubes: the text with the regions of empty tubes
    empty = gen.add_regions(fresh, torch.zeros(n_obj, fresh.num_frames, 1, 1, dtype=torch.bool))
    inner = [t for t in out.token_ids[:-1]].count(obj)
    assert gen.score_texts(fresh, [], [out.token_ids], max_passes=1)[0] == pytest.approx(
        gen.score_continuations(fresh, [], [model.with_regions(out.token_ids, empty[:inner])])[0], abs=1e-4)
    # candidate scoring with regions: the cached path is the uncached reference
    preds = [Predictor(model=model, config=PredictorConfig(cached_scoring=c, max_candidates=10_000,
                                                           score_batch_size=7)).predict(sample.video)
             for c in (True, False)]
    assert len(preds[0].relations) >= 30
    _compare_predictions(*preds)
    # a saved checkpoint predicts the same and keeps the schedule's counter
    model.save_pretrained(tmp_path / "ckpt")
    loaded = PSG4DModel.from_pretrained(tmp_path / "ckpt")
    assert int(loaded.region_forwards) == int(model.region_forwards) > 0
    _compare_predictions(preds[0], Predictor(model=loaded, config=PredictorConfig(max_candidates=10_000))
                         .predict(sample.video))


def test_region_feedback_with_sam2_as_the_mask_path():
    """With SAM2 decoding the tubes (tiny-sam2's mask path), decoded regions come from SAM2's own
    tubes in training and in prediction."""
    import dataclasses

    from psg4d.model.mask_decoder import MaskDecoderConfig

    md = dataclasses.replace(MaskDecoderConfig.sam2_tiny(), semantic_loss_weight=1.0, region_prompt=True)
    cfg = tiny_config(mask_decoder=md, supervise_all_objects=True, mask_prompts_per_object=1, obj_cls_loss_weight=1.0)
    cfg.region = RegionConfig(enabled=True, gold_prob=0.0)
    torch.manual_seed(0)
    model = PSG4DModel.from_config(cfg).train()
    sample = make_sample(1, size=48)
    out = model(**model.collate([sample]))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and model.region_encoder.out.weight.grad.abs().sum() > 0
    model.eval()
    gen = SceneGraphGenerator(model)
    ctx = gen.encode_video(sample.video)
    text = model.prompt.target_ids("person [Obj] holding cup [Obj] 1 3")
    exact = gen.score_texts(ctx, [], [text])[0]
    assert np.isfinite(exact) and len(ctx.regions) >= 2
    pred = Predictor(model=model, config=PredictorConfig(max_new_tokens=24)).predict(sample.video)
    pred.validate()
