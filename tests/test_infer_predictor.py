"""Predictor: ranked candidates, tubes, frame-count changes, save/load, the predict command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from psg4d.data.schema import SceneGraph4D
from psg4d.data.masks import dense_tube_viou, rle_encode_batch
from psg4d.families import PredictOptions
from psg4d.infer.predictor import Predictor, PredictorConfig, Tube
from psg4d.model.generation import SceneGraphGenerator
from psg4d.model.reading import merge_objects
from psg4d.model.psg4d_llm import PSG4DModel
from test_model_psg4d import PREDS, make_sample, overfit, tiny_config, trained_model


@pytest.fixture(scope="module")
def trained_ckpt(tmp_path_factory):
    model, sample, _ = trained_model()
    ckpt = tmp_path_factory.mktemp("pred") / "ckpt"
    model.save_pretrained(ckpt)
    return model, sample, ckpt


def test_ranked_candidates(trained_ckpt):
    model, sample, _ = trained_ckpt
    pred = Predictor(model=model).predict(sample.video)
    pred.validate(require_tubes=True)
    assert pred.num_frames == 4 and (pred.height, pred.width) == (32, 32)
    cats = sorted(o.category for o in pred.objects)
    assert cats == sorted(o.category for o in sample.graph.objects)  # duplicate [Obj] tubes merged
    assert len(pred.relations) >= 100  # 3 objects x 2 x 17 predicates
    scores = [r.score for r in pred.relations]
    assert all(np.isfinite(scores)) and scores == sorted(scores, reverse=True)
    keys = [(r.subject_id, r.object_id, r.predicate) for r in pred.relations]
    assert len(keys) == len(set(keys))
    # the generated (ground-truth) triplets come first
    by_id = {o.object_id: o.category for o in pred.objects}
    gt_objs = {o.object_id: o.category for o in sample.graph.objects}
    gt = {(gt_objs[r.subject_id], r.predicate, gt_objs[r.object_id]): r.spans for r in sample.graph.relations}
    top = {(by_id[r.subject_id], r.predicate, by_id[r.object_id]): r.spans for r in pred.relations[: len(gt)]}
    assert top == gt
    assert pred.meta["dropped_triplets"] == 0


def test_tube_shapes_and_duplicate_merging(trained_ckpt):
    model, sample, _ = trained_ckpt
    pred = Predictor(model=model).predict(sample.video)
    for o in pred.objects:
        assert (o.tube.num_frames, o.tube.height, o.tube.width) == (4, 32, 32) and np.isfinite(o.score)
    box = np.zeros((4, 8, 8), bool)
    box[:, 2:6, 2:6] = True
    shifted = np.roll(box, 1, axis=2)  # vIoU 12/20 = 0.6
    far = np.roll(box, 4, axis=1)  # disjoint
    occ = {0: "cup", 1: "table", 2: "Cup", 3: "cup", 5: "table"}
    tubes = [Tube(rle_encode_batch(m), s) for m, s in
             zip([box, box, shifted, far, box, box], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])]
    assign, objects = merge_objects(occ, tubes, np.ones(4), merge_viou=0.5)
    assert assign == {0: 0, 1: 1, 2: 0, 3: 2, 5: 1}
    assert [(c, t.score) for c, t in objects] == [("cup", 0.1), ("table", 0.2), ("cup", 0.4)]
    # model frames stand for several video frames: vIoU is weighted by how many
    half = box.copy()
    half[2:] = False  # agrees with box on frames 0-1 only: vIoU 32/64 unweighted
    assert merge_objects({0: "cup", 1: "cup"}, [Tube(rle_encode_batch(box), 0), Tube(
        rle_encode_batch(half), 0)], np.ones(4), merge_viou=0.5)[0] == {0: 0, 1: 0}  # 0.5 >= merge_viou
    assert merge_objects({0: "cup", 1: "cup"}, [Tube(rle_encode_batch(box), 0), Tube(
        rle_encode_batch(half), 0)], np.array([1, 1, 3, 3]), merge_viou=0.5)[0] == {0: 0, 1: 1}  # 32/(32+96) = 0.25


@pytest.mark.slow
def test_tubes_follow_the_objects_after_longer_training():
    torch.manual_seed(0)
    model = PSG4DModel.from_config(tiny_config())
    sample = make_sample(0)
    losses = overfit(model, sample, steps=100, lr=2e-3)
    assert losses["loss_dice"] < 0.3, losses
    pred = Predictor(model=model).predict(sample.video)
    gt = {o.category: o.tube.to_dense() for o in sample.graph.objects}
    assert sorted(o.category for o in pred.objects) == sorted(gt)
    for o in pred.objects:
        assert dense_tube_viou(o.tube.to_dense(), gt[o.category]) > 0.5, o.category


def test_other_frame_counts_and_rgb_only(trained_ckpt):
    model, sample, _ = trained_ckpt
    predictor = Predictor(model=model, config=PredictorConfig(max_new_tokens=40, max_new_pairs=2))
    for frames, depth in ((9, True), (2, False)):
        video = make_sample(0, frames=frames, depth=depth).video
        pred = predictor.predict(video)
        pred.validate(require_tubes=True)
        assert pred.num_frames == frames
        for r in pred.relations:
            assert all(0 <= a <= b < frames for a, b in r.spans)


def test_reloaded_checkpoint_predicts_the_same(trained_ckpt):
    model, sample, ckpt = trained_ckpt
    cfg = PredictorConfig(max_new_pairs=2)
    a = Predictor(model=model, config=cfg).predict(sample.video)
    b = Predictor(model=PSG4DModel.from_pretrained(ckpt), config=cfg).predict(sample.video)
    assert json.dumps(a.to_json(), sort_keys=True) == json.dumps(b.to_json(), sort_keys=True)


def test_predict_command_on_a_frame_folder(trained_ckpt, tmp_path):
    from psg4d.cli import main

    _, sample, ckpt = trained_ckpt
    frames, depth = tmp_path / "rgb", tmp_path / "depth"
    frames.mkdir()
    depth.mkdir()
    for t in range(sample.video.num_frames):
        Image.fromarray(sample.video.rgb[t]).save(frames / f"frame_{t}.png")
        np.save(depth / f"frame_{t}.npy", sample.video.depth[t])
    out = tmp_path / "pred.json"
    assert main(["predict", "--ckpt", str(ckpt), "--rgb", str(frames), "--depth", str(depth), "--out", str(out)]) == 0
    pred = SceneGraph4D.load(out)
    assert pred.num_frames == 4 and len(pred.relations) >= 100
    assert {r.predicate for r in pred.relations} <= set(PREDS)

    (depth / "frame_3.npy").unlink()  # RGB 4 frames, depth 3
    assert main(["predict", "--ckpt", str(ckpt), "--rgb", str(frames), "--depth", str(depth), "--out", str(out)]) == 2
    assert main(["predict", "--ckpt", str(tmp_path), "--rgb", str(frames), "--out", str(out)]) == 2


def test_predict_split_streams_a_dataset(trained_ckpt, tmp_path):
    from psg4d.data.readers import open_dataset
    from psg4d.data.synth import SynthConfig, generate
    from psg4d.infer.predictor_factory import predict_split

    _, _, ckpt = trained_ckpt
    generate(SynthConfig(videos=3, images=0, frames=4, size=32, workers=1, shadows=False), tmp_path / "ds",
             progress=False)
    reader = open_dataset(tmp_path / "ds" / "4d")
    split = next(s for s in reader.splits if reader.video_ids(s))
    preds = list(predict_split(ckpt, tmp_path / "ds" / "4d", split, limit=1,
                               options=PredictOptions(max_new_tokens=30, max_candidates=20)))
    assert [p.video_id for p in preds] == reader.video_ids(split)[:1]
    preds[0].validate(require_tubes=True)
    assert preds[0].num_frames == reader.read_video(preds[0].video_id).num_frames


def test_predict_depth_as_16bit_png_and_rgb_only(trained_ckpt, tmp_path):
    from psg4d.cli import main

    _, sample, ckpt = trained_ckpt
    frames, depth = tmp_path / "rgb", tmp_path / "depth"
    frames.mkdir()
    depth.mkdir()
    for t in range(sample.video.num_frames):
        Image.fromarray(sample.video.rgb[t]).save(frames / f"{t:05d}.jpg")
        Image.fromarray((sample.video.depth[t] * 1000).astype(np.uint16)).save(depth / f"{t:05d}.png")
    out_png, out_rgb = tmp_path / "png.json", tmp_path / "rgb_only.json"
    assert main(["predict", "--ckpt", str(ckpt), "--rgb", str(frames), "--depth", str(depth),
                 "--out", str(out_png), "--report"]) == 0
    assert main(["predict", "--ckpt", str(ckpt), "--rgb", str(frames), "--out", str(out_rgb)]) == 0
    with_depth, rgb_only = SceneGraph4D.load(out_png), SceneGraph4D.load(out_rgb)
    assert with_depth.num_frames == rgb_only.num_frames == 4
    assert (tmp_path / "png.html").read_text().startswith("<!DOCTYPE html>")
    # the depth branch is used when depth is given, so the ranked scores differ
    assert [r.score for r in with_depth.relations] != [r.score for r in rgb_only.relations]


def test_predict_real_video_rgb_only_and_batch_folder(trained_ckpt, tmp_path):
    import shutil

    from psg4d.cli import main
    from test_video_io import packaged_video

    path = packaged_video()
    _, _, ckpt = trained_ckpt
    out = tmp_path / "real.json"
    assert main(["predict", "--ckpt", str(ckpt), "--rgb", str(path), "--fps", "2", "--size", "48",
                 "--max-new-tokens", "40", "--out", str(out)]) == 0
    pred = SceneGraph4D.load(out)
    # every frame --fps keeps (132 frames at 25 fps -> 11 at 2 fps), not the model's 4; shorter side 48
    assert pred.num_frames == 11 and pred.height == 48
    assert pred.meta["frame_indices"] == [int(i) for i in np.floor(np.arange(11) * 12.5 + 1e-9)]
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a.mp4", "b.mp4"):
        shutil.copy(path, videos / name)
    outdir = tmp_path / "preds"
    assert main(["predict", "--ckpt", str(ckpt), "--rgb", str(videos), "--max-new-tokens", "20",
                 "--size", "32", "--out", str(outdir)]) == 0
    assert sorted(p.name for p in outdir.iterdir()) == ["a.json", "b.json"]
    assert main(["predict", "--ckpt", str(ckpt), "--rgb", str(videos), "--depth", str(videos),
                 "--out", str(outdir)]) == 2


def test_long_video_is_streamed_on_its_own_timeline_and_viz_needs_two_paths(trained_ckpt, tmp_path):
    """A video longer than the model's window: every source frame gets masks and spans (windows
    stitched), the JSON records the frames read, and viz reads them again from the two paths."""
    from psg4d.cli import main

    _, sample, ckpt = trained_ckpt
    frames = tmp_path / "rgb"
    frames.mkdir()
    for t in range(14):  # the trained clip played forward and back: 14 frames, model window 4
        Image.fromarray(sample.video.rgb[[0, 1, 2, 3, 3, 2, 1, 0, 0, 1, 2, 3, 3, 2][t]]).save(frames / f"{t}.png")
    out = tmp_path / "pred.json"
    assert main(["predict", "--ckpt", str(ckpt), "--rgb", str(frames), "--out", str(out), "--window", "6",
                 "--stride", "3"]) == 0
    pred = SceneGraph4D.load(out)
    assert pred.num_frames == 14 and pred.meta["frame_indices"] == list(range(14))
    assert pred.meta["sampling"]["mode"] == "streaming" and pred.meta["streaming"]["num_windows"] == 4
    assert pred.objects and all(len(o.tube.rles) == 14 for o in pred.objects)
    assert pred.relations and all(0 <= a <= b <= 13 for r in pred.relations for a, b in r.spans)
    html = tmp_path / "pred.html"
    assert main(["viz", str(out), "--video", str(frames), "--out", str(html)]) == 0
    assert html.read_text().startswith("<!DOCTYPE html>")


def test_real_clip_longer_than_the_window_is_predicted_whole(trained_ckpt, tmp_path):
    from psg4d.cli import main
    from test_video_io import packaged_video

    path = packaged_video()
    _, _, ckpt = trained_ckpt
    out = tmp_path / "bbb.json"
    assert main(["predict", "--ckpt", str(ckpt), "--rgb", str(path), "--max-new-tokens", "20", "--out", str(out)]) == 0
    pred = SceneGraph4D.load(out)
    # 132 frames of 1280x720 -> every frame, read at the model's 32-pixel shorter side
    assert pred.num_frames == 132 and (pred.height, pred.width) == (720, 1280)  # source size
    assert pred.meta["sampling"]["size"] == [32, 57]  # what was read
    assert pred.meta["sampling"]["source_size"] == [720, 1280]
    assert main(["viz", str(out), "--video", str(path), "--out", str(tmp_path / "bbb.html")]) == 0
    # --max-frames keeps the old one-pass uniform sampling, recorded for viz the same way
    assert main(["predict", "--ckpt", str(ckpt), "--rgb", str(path), "--max-new-tokens", "20", "--max-frames", "6",
                 "--out", str(out)]) == 0
    pred = SceneGraph4D.load(out)
    assert pred.num_frames == 6 and pred.meta["sampling"]["mode"] == "uniform"
    assert main(["viz", str(out), "--video", str(path), "--out", str(tmp_path / "bbb.html")]) == 0


def test_tagged_objects_the_text_skipped_get_tubes(monkeypatch):
    from test_model_psg4d import make_sample as _make

    torch.manual_seed(0)
    model = PSG4DModel.from_config(tiny_config(tag_words=True, tag_word_noise=0.0, obj_cls_loss_weight=1.0))
    sample = _make(0)
    overfit(model, sample, steps=30)
    predictor = Predictor(model=model)
    # the model tags "table", which is in no generated triplet
    monkeypatch.setattr(model, "inference_tags", lambda dense, tag_logits: ["person", "table"])
    generator = predictor.generator
    ctx = generator.encode_video(sample.video)
    gen = generator.generate(ctx)
    assert "table" not in gen.text
    pred = predictor.predict(sample.video)
    assert pred.meta["tags"] == ["person", "table"]
    tables = [o for o in pred.objects if o.category == "table"]
    assert len(tables) == 1 and np.isfinite(tables[0].score)
    # its tube is the one the [Obj] state of a teacher-forced "table [Obj]" after the text decodes
    context = gen.context_after(model.ids.eos) + model.prompt.text_ids(";")
    hidden = generator.obj_hidden_after(ctx, context, ["table", "person"])
    assert hidden.shape == (2, model.hidden_size)
    logits, _ = generator.decode_masks(ctx, hidden[:1])
    from psg4d.model.mask_decoder import upsample_to

    expected = (upsample_to(logits[0], (32, 32)) > 0).numpy()  # [T, H, W], model frames = video frames here
    assert np.array_equal(tables[0].tube.to_dense(), expected)
    # and it takes part in the pairings
    table_id = tables[0].object_id
    assert any(table_id in (r.subject_id, r.object_id) for r in pred.relations)


def _compare_predictions(a: SceneGraph4D, b: SceneGraph4D, tol: float = 1e-4) -> None:
    """Same objects and tubes, same candidates (subject, object, predicate, spans), scores within ``tol``."""
    assert [(o.category, o.tube.rles) for o in a.objects] == [(o.category, o.tube.rles) for o in b.objects]
    ka = {(r.subject_id, r.object_id, r.predicate): r for r in a.relations}
    kb = {(r.subject_id, r.object_id, r.predicate): r for r in b.relations}
    assert ka.keys() == kb.keys()
    for k in ka:
        assert ka[k].spans == kb[k].spans, k
        assert abs(ka[k].score - kb[k].score) <= tol, (k, ka[k].score, kb[k].score)


def test_cached_scoring_gives_the_uncached_predictions(trained_ckpt):
    """The KV-cached candidate scoring is the uncached reference, to 1e-4 on every score."""
    model, sample, _ = trained_ckpt
    for video in (sample.video, make_sample(3, frames=6).video, make_sample(4, frames=3, depth=False).video):
        preds = [Predictor(model=model, config=PredictorConfig(cached_scoring=c, max_candidates=10_000,
                                                               score_batch_size=7)).predict(video)
                 for c in (True, False)]
        assert len(preds[0].relations) >= 30  # generated triplets, their alternatives and new pairs
        _compare_predictions(*preds)


def test_cached_and_uncached_teacher_forcing_agree(trained_ckpt):
    model, sample, _ = trained_ckpt
    cached, uncached = SceneGraphGenerator(model), SceneGraphGenerator(model, cached=False)
    ctx = cached.encode_video(sample.video)
    text = model.prompt.text_ids
    context = text("person [Obj] holding cup [Obj] 1 3 ;")
    conts = [text("cup"), text("water dispenser [Obj] next to"), [model.ids.eos], text("person [Obj] on table [Obj]")]
    for ctx_ids in ([], context):
        for bs in (1, 3, 32):  # full, partial and single-row chunks
            a = cached.score_continuations(ctx, ctx_ids, conts, batch_size=bs)
            b = uncached.score_continuations(ctx, ctx_ids, conts, batch_size=bs)
            np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)
        ha = cached.obj_hidden_after(ctx, ctx_ids, ["cup", "water dispenser", "table"], batch_size=2)
        hb = uncached.obj_hidden_after(ctx, ctx_ids, ["cup", "water dispenser", "table"], batch_size=2)
        torch.testing.assert_close(ha, hb, atol=1e-4, rtol=0)
    # the score of a text is the sum of its greedy step log-probabilities
    gen = cached.generate(ctx, max_new_tokens=20)
    total = cached.score_continuations(ctx, [], [gen.token_ids])[0]
    assert total == pytest.approx(sum(gen.step_logprobs), abs=1e-4)
    # several contexts in one call: prefixes of what generation read run on its cache, others alone
    requests = [(gen.context_ids[:k], conts) for k in (0, 3, len(gen.context_ids))] + [(context, conts[:2])]
    assert ctx.kv is not None and ctx.kv.serves(requests[1][0]) and not ctx.kv.serves(context)
    many = cached.score_many(ctx, requests)
    for (ctx_ids, cs), got in zip(requests, many):
        np.testing.assert_allclose(got, uncached.score_continuations(ctx, ctx_ids, cs), atol=1e-4, rtol=0)


def test_shared_heads():
    from psg4d.model.packing import shared_head_lengths

    conts = [[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 6], [7, 8], [1, 2, 3]]
    # longest prefix shared with any other continuation, leaving at least one token of tail
    assert shared_head_lengths(conts) == [3, 3, 2, 0, 2]
    assert shared_head_lengths([[4]]) == [0] and shared_head_lengths([]) == []


def test_rescoring_reads_the_context_generation_read():
    """A dropped repeat stays in what the LLM read: re-scoring a later triplet in the recorded
    context gives its greedy log-probability; the trimmed text would not."""
    torch.manual_seed(0)
    model = PSG4DModel.from_config(tiny_config())
    sample = make_sample(0)
    a, b = "person [Obj] holding cup [Obj] 1 3", "cup [Obj] next to water dispenser [Obj] 0 0"
    target = model.prompt.target_ids(f"{a} ; {a} ; {b}")  # the LLM learns to repeat a before b
    batch = model.collate([sample])
    batch.update(target_ids=torch.tensor([target]), target_mask=torch.ones(1, len(target), dtype=torch.long),
                 target_loss_mask=None, mask_targets=None, obj_categories=None)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for _ in range(150):
        loss = model(**batch)["loss_text"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.01:
            break
    generator = SceneGraphGenerator(model)
    gen = generator.generate(sample.video, max_new_tokens=60)
    assert gen.text == f"{a} ; {b}"  # the repeat was dropped from the output ...
    sep = model.prompt.text_ids(";")
    assert gen.context_ids == model.prompt.text_ids(f"{a} ; {a} ; {b}")  # ... but not from what was read
    start = len(model.prompt.text_ids(a)) + len(sep)  # first token of b in the output
    b_ids = gen.token_ids[start:-1]
    greedy = sum(gen.step_logprobs[start:-1])
    read = generator.score_continuations(gen.context, gen.context_before(start), [b_ids])[0]
    assert read == pytest.approx(greedy, abs=1e-4)
    trimmed = generator.score_continuations(gen.context, gen.token_ids[:start], [b_ids])[0]
    assert abs(trimmed - greedy) > 1e-3  # what the predictor scored against before
