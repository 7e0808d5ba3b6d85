"""The pipeline baseline end to end: `psg4d train` on a `kind: pipeline` config, its cached stages,
resume, the assembled checkpoint that `psg4d eval --ckpt` scores, and config errors."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_model_pretrained import assert_still_readable, flip_middle_bytes, size_mismatch_line

from psg4d.baseline.checkpoint import load_modules, read_config, save_modules
from psg4d.baseline.config import PipelineConfig, RelationConfig, SegmenterConfig
from psg4d.baseline.config import load_pipeline_config, with_data_vocab
from psg4d.baseline.pipeline import train_pipeline
from psg4d.baseline.predict import PipelinePredictor
from psg4d.families import family_of_checkpoint, read_header
from psg4d.baseline.relation import RelationModel
from psg4d.baseline.segmenter import QuerySegmenter
from psg4d.baseline.types import TrackedTubes
from psg4d.cli import main
from psg4d.config import to_dict
from psg4d.data.readers import open_dataset
from psg4d.data.synth.generate import SynthConfig, generate
from psg4d.data.vocab import training_vocab
from psg4d.engine import checkpoint as ckpt
from psg4d.engine.metrics import read_metrics
from psg4d.errors import CheckpointError
from psg4d.model.weight_files import WEIGHTS_SHA256, file_sha256
from psg4d.train.stages import PRESET_DIR

PRESET = PRESET_DIR / "pipeline_hoi_tiny.yaml"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline_world")
    generate(SynthConfig(preset="hoi", videos=8, images=0, frames=4, size=32, seed=3, workers=1), root)
    return root


def _overrides(world, **extra) -> list[str]:
    sets = {"data.root": str(world), "segmenter.image_size": 32, "segmenter.widths": "[8, 16, 16]",
            "segmenter.hidden": 16, "segmenter.ffn": 32, "segmenter.num_queries": 8, "relation.hidden": 16,
            "segment_train.steps": 30, "segment_train.batch_size": 4, "segment_train.save_every": 20,
            "segment_train.lr": 3e-3, "segment_train.warmup_steps": 10,
            "relation_train.steps": 3, "relation_train.batch_size": 2, "relation_train.save_every": 2}
    sets.update(extra)
    return [f"{k}={v}" for k, v in sets.items()]


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    """A pipeline trained through `psg4d train` (the segmenter long enough to separate objects:
    about 120 steps here) -> (run folder, what the command printed)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("pipeline_run") / "run"
    argv = ["train", "--config", "pipeline_hoi_tiny", "--out", str(out)]
    for s in _overrides(world, **{"segment_train.steps": 120}):
        argv += ["--set", s]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(argv) == 0
    first = buf.getvalue()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(argv) == 0
    return out, first, buf.getvalue()


def test_train_cli_runs_every_stage_and_eval_scores_the_checkpoint(world, trained, tmp_path):
    out, first, rerun = trained
    assert "stage segment: 120 steps" in first and "stage relation: 3 steps" in first and "final model:" in first
    # each stage on disk: the segmenter, one tube file per training video, the relation model
    reader = open_dataset(world / "4d")
    train_ids = reader.video_ids("train")
    assert sorted(p.stem for p in (out / "track" / "train").glob("*.npz")) == sorted(train_ids)
    tubes = TrackedTubes.load(out / "track" / "train" / f"{train_ids[0]}.npz")
    assert tubes.masks.shape[1:] == (4, 32, 32) and tubes.valid.shape == tubes.masks.shape[:2]
    assert sum(len(TrackedTubes.load(p)) >= 2 for p in (out / "track" / "train").glob("*.npz")) >= 3
    final = out / "final"
    # the registry knows the final folder as a pipeline, and a stage's folder as part of one
    head = read_header(final)
    assert (head.format, head.kind, head.version) == ("psg4d-model", "pipeline", 1)
    assert family_of_checkpoint(final).kind == "pipeline"
    with pytest.raises(CheckpointError, match="one stage of a pipeline baseline.*final/"):
        family_of_checkpoint(out / "segment" / "final")
    cfg = read_config(final)
    vocab = training_vocab([(reader, train_ids)])
    assert cfg["segmenter"]["class_names"] == vocab.objects
    assert cfg["relation"]["predicate_names"] == vocab.predicates
    assert "floor" in cfg["segmenter"]["stuff_names"] and "mug" not in cfg["segmenter"]["stuff_names"]
    # a rerun keeps every finished stage
    assert "stage segment: already done" in rerun and "stage relation: already done" in rerun
    # the finished pipeline was scored on the validation videos
    val = json.loads((out / "val.json").read_text())
    assert val["split"] == "val" and val["videos"] == len(reader.video_ids("val")) and "R@50" in val["pvsg"]
    assert 0.0 <= val["segmentation"]["tube"]["mean_tube_viou"] <= 1.0
    # ... and stages.json still holds the reports of the run that did each stage's work
    stages = {r["name"]: r for r in json.loads((out / "stages.json").read_text())}
    assert not any(r["skipped"] for r in stages.values())
    assert stages["segment"]["steps"] == 120 and stages["track"]["steps"] == len(train_ids)
    # the checkpoint predicts valid scene graphs that psg4d eval scores, with segmentation quality
    assert main(["eval", "--ckpt", str(final), "--data", str(world / "4d"), "--split", "test",
                 "--out", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert "R@50" in metrics and metrics["segmentation"]["tube"]["num_gt_objects"] > 0


def test_prediction_is_a_valid_scene_graph_at_the_video_size(world, trained):
    predictor = PipelinePredictor.from_pretrained(trained[0] / "final")
    reader = open_dataset(world / "4d")
    video = reader.read_video(reader.video_ids("test")[0])
    graph = predictor.predict(video)
    graph.validate(require_tubes=True)
    assert (graph.num_frames, graph.height, graph.width) == (video.num_frames, video.height, video.width)
    assert len(graph.objects) >= 2 and graph.relations
    ids = {o.object_id for o in graph.objects}
    scores = [r.score for r in graph.relations]
    assert scores == sorted(scores, reverse=True)
    for r in graph.relations:
        assert r.subject_id in ids and r.object_id in ids and r.subject_id != r.object_id
        assert r.predicate in reader.predicate_vocab
        assert all(0 <= a <= b < video.num_frames for a, b in r.spans)
    for o in graph.objects:
        assert o.category in reader.object_vocab
        assert o.tube.num_frames == video.num_frames
    # a larger video: tubes come back at its own size
    big = replace(video, rgb=np.repeat(np.repeat(video.rgb, 2, axis=1), 2, axis=2),
                  depth=np.repeat(np.repeat(video.depth, 2, axis=1), 2, axis=2))
    graph = predictor.predict(big)
    graph.validate(require_tubes=True)
    assert (graph.height, graph.width) == (64, 64)


def test_an_interrupted_stage_resumes_from_its_last_save(world, tmp_path, caplog):
    out = tmp_path / "run"
    cfg = load_pipeline_config(PRESET, _overrides(world, **{"segment_train.log_every": 5}))
    train_pipeline(cfg, out_dir=out, only_stage="segment")
    first = load_file(str(out / "segment" / "final" / "model.safetensors"))
    # as if the run had been killed after step 20's save: no step-30 checkpoint, no final model
    stage = out / "segment"
    shutil.rmtree(stage / "final")
    shutil.rmtree(stage / ckpt.step_dir_name(30))
    ckpt.point_last(stage, stage / ckpt.step_dir_name(20))
    with caplog.at_level(logging.INFO, logger="psg4d.baseline.pipeline"):
        result = train_pipeline(cfg, out_dir=out, only_stage="segment")
    assert "stage segmenter: resuming from" in caplog.text and "at step 20" in caplog.text
    assert result.stages[0].steps == 30 and not result.stages[0].skipped
    # the resumed run ends exactly where the uninterrupted one did: same data order, generator, RNGs
    # and optimizer state, and a thread count fixed for the run (adapt_threads_every=0)
    again = load_file(str(out / "segment" / "final" / "model.safetensors"))
    assert again.keys() == first.keys()
    for k in first:
        torch.testing.assert_close(again[k], first[k], rtol=1e-6, atol=0), k
    # the metrics of the redone steps replace those the interrupted run logged after its save
    steps = [r["step"] for r in read_metrics(stage / "metrics.jsonl") if "loss" in r]
    assert steps == [5, 10, 15, 20, 25, 30]


def test_the_relation_ablation_reuses_the_segmenter_and_its_tubes(world, trained, tmp_path):
    base = trained[0]
    cfg = load_pipeline_config(PRESET, _overrides(world) + [f"reuse={base}", "relation.use_temporal=false"])
    result = train_pipeline(cfg, out_dir=tmp_path / "no_temporal")
    assert [s.skipped for s in result.stages] == [True, True, False]
    assert not (tmp_path / "no_temporal" / "segment").exists() and not (tmp_path / "no_temporal" / "track").exists()
    final = read_config(result.final_dir)
    assert final["relation"]["use_temporal"] is False
    assert final["segmenter"] == read_config(base / "final")["segmenter"]


def test_a_run_folder_refuses_other_settings(world, tmp_path):
    out = tmp_path / "run"
    train_pipeline(load_pipeline_config(PRESET, _overrides(world)), out_dir=out, only_stage="segment")
    other = load_pipeline_config(PRESET, _overrides(world, **{"segmenter.num_queries": 6}))
    with pytest.raises(CheckpointError, match=r"different model \(segmenter.num_queries: 8 -> 6\).*--no-resume"):
        train_pipeline(other, out_dir=out)


def test_no_resume_retrains_a_finished_stage_and_keeps_the_earlier_one(world, tmp_path):
    out = tmp_path / "run"
    cfg = load_pipeline_config(PRESET, _overrides(world, **{"segment_train.steps": 4}))
    train_pipeline(cfg, out_dir=out, only_stage="segment")
    first = load_file(str(out / "segment" / "final" / "model.safetensors"))
    again = train_pipeline(cfg, out_dir=out, only_stage="segment", resume=False)
    assert not again.stages[0].skipped and again.stages[0].steps == 4
    (aside,) = out.glob("segment.replaced-*")
    kept = load_file(str(aside / "final" / "model.safetensors"))
    assert all(torch.equal(first[k], kept[k]) for k in first) and (aside / "experiment.json").is_file()
    # with no stage named, the whole run folder moves aside
    from psg4d.utils.io import start_over

    moved = start_over(out)
    assert moved is not None and (moved / "segment" / "final").is_dir() and not out.exists()


def test_the_pipeline_learns_the_classes_of_its_training_videos_only(tmp_path):
    """A category only the test videos hold (declared by the dataset) never becomes a segmenter
    class, as for the 4D-LLM (psg4d.data.vocab)."""
    root = tmp_path / "world"
    generate(SynthConfig(preset="hoi", videos=10, images=0, frames=2, size=16, seed=3, workers=1, novel=["apple"]), root)
    reader = open_dataset(root / "4d")
    cats = {s: {o.category for v in reader.video_ids(s) for o in reader.read_graph(v, with_masks=False).objects}
            for s in reader.splits}
    assert "apple" in reader.object_vocab and "apple" in cats["test"] and "apple" not in cats["train"]
    cfg = with_data_vocab(load_pipeline_config(PRESET, [f"data.root={root}"]))
    assert set(cfg.segmenter.class_names) == cats["train"] and "apple" not in cfg.segmenter.class_names
    preds = {r.predicate for v in reader.video_ids("train") for r in reader.read_graph(v, with_masks=False).relations}
    assert set(cfg.relation.predicate_names) == preds and cfg.relation.num_classes == len(cats["train"])
    # the classes follow the dataset's declared order
    order = list(reader.object_vocab)
    assert cfg.segmenter.class_names == sorted(cfg.segmenter.class_names, key=order.index)


def test_a_non_finite_loss_stops_a_pipeline_stage_before_anything_is_saved(world, tmp_path, monkeypatch):
    from psg4d.baseline import pipeline

    def nan_loss(self, outputs, targets):
        return {"loss": outputs["class_logits"].sum() * float("nan")}

    monkeypatch.setattr(pipeline.SegmentationLoss, "forward", nan_loss)
    out = tmp_path / "run"
    with pytest.raises(FloatingPointError, match=r"stage 'segmenter': loss is nan at step 1"):
        train_pipeline(load_pipeline_config(PRESET, _overrides(world)), out_dir=out, only_stage="segment")
    assert not (out / "segment" / "final").exists() and ckpt.find_last(out / "segment") is None


@pytest.mark.parametrize("bad, message", [
    ("segmenter.image_size=30", "segmenter.image_size must be a multiple of 8"),
    ("segment_train.lr=2", "segment_train.lr must be in"),
    ("segmenter.num_querys=3", "num_querys"),
])
def test_bad_pipeline_settings_are_one_line(world, tmp_path, capsys, bad, message):
    argv = ["train", "--config", "pipeline_hoi_tiny", "--out", str(tmp_path / "r"), "--set", f"data.root={world}",
            "--set", bad]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_default_config_is_the_preset():
    cfg = load_pipeline_config(PRESET)
    assert isinstance(cfg, PipelineConfig) and cfg.kind == "pipeline" and cfg.segmenter.use_depth
    assert cfg.relation.use_temporal and cfg.segment_train.steps > 0
    assert np.isclose(cfg.relation_train.lr, 5e-4)


def test_a_video_longer_than_the_relation_model_reads_is_sampled(world, trained):
    predictor = PipelinePredictor.from_pretrained(trained[0] / "final")
    predictor.config.relation.max_frames = 3  # the video has 4 frames
    reader = open_dataset(world / "4d")
    video = reader.read_video(reader.video_ids("test")[0])
    graph = predictor.predict(video)
    graph.validate(require_tubes=True)
    assert graph.relations and all(0 <= a <= b < video.num_frames for r in graph.relations for a, b in r.spans)


def test_predict_command_runs_a_pipeline_checkpoint_on_a_video(world, trained, tmp_path, capsys):
    from PIL import Image

    from psg4d.data.schema import SceneGraph4D

    reader = open_dataset(world / "4d")
    video = reader.read_video(reader.video_ids("test")[0])
    frames, depth = tmp_path / "frames", tmp_path / "depth"
    frames.mkdir()
    depth.mkdir()
    for i in range(video.num_frames):
        Image.fromarray(video.rgb[i]).save(frames / f"{i:04d}.png")
        np.save(depth / f"{i:04d}.npy", video.depth[i])
    final = str(trained[0] / "final")
    out = tmp_path / "p.json"
    assert main(["predict", "--ckpt", final, "--rgb", str(frames), "--depth", str(depth), "--out", str(out),
                 "--report"]) == 0
    graph = SceneGraph4D.load(out)
    graph.validate(require_tubes=True)
    assert (graph.num_frames, graph.height, graph.width) == (video.num_frames, video.height, video.width)
    assert graph.meta["model"] == "pipeline" and graph.meta["frame_indices"] == list(range(video.num_frames))
    assert graph.objects and out.with_suffix(".html").is_file()
    # the same video through the dataset path gives the same graph (the PNGs are lossless)
    direct = PipelinePredictor.from_pretrained(final).predict(video)
    assert [o.category for o in graph.objects] == [o.category for o in direct.objects]
    # the 4D-LLM's options are refused in one line, before any work
    capsys.readouterr()
    assert main(["predict", "--ckpt", final, "--rgb", str(frames), "--out", str(tmp_path / "q.json"),
                 "--mode", "chain"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--mode, --vocab and --namer are the 4D-LLM's" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "q.json").exists()
    assert main(["predict", "--ckpt", final, "--rgb", str(frames), "--out", str(tmp_path / "q.json"),
                 "--namer", "gemma3-270m"]) == 2
    assert "--namer are the 4D-LLM's" in capsys.readouterr().err


def test_batch_predict_and_eval_take_a_pipeline_checkpoint_through_the_registry(world, trained, tmp_path):
    """A folder of videos (batch mode, once refused for the pipeline) and a dataset split
    (``psg4d eval --ckpt``) are predicted through the same registry lookup as one video."""
    import av

    from psg4d.data.schema import SceneGraph4D
    from psg4d.families import PredictOptions
    from psg4d.infer.predictor_factory import predict_split

    reader = open_dataset(world / "4d")
    ids = reader.video_ids("test")[:2]
    videos = tmp_path / "videos"
    videos.mkdir()
    for vid in ids:
        rgb = reader.read_video(vid).rgb  # [T, H, W, 3]
        with av.open(str(videos / f"{vid}.mp4"), "w") as c:
            s = c.add_stream("mpeg4", rate=10)
            s.height, s.width, s.pix_fmt = rgb.shape[1], rgb.shape[2], "yuv420p"
            for frame in rgb:
                for pkt in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    c.mux(pkt)
            for pkt in s.encode():
                c.mux(pkt)
    final = trained[0] / "final"
    out = tmp_path / "preds"
    assert main(["predict", "--ckpt", str(final), "--rgb", str(videos), "--out", str(out), "--workers", "1",
                 "--candidates", "5"]) == 0
    assert sorted(p.stem for p in out.glob("*.json")) == sorted(ids)
    for vid in ids:
        graph = SceneGraph4D.load(out / f"{vid}.json")
        graph.validate(require_tubes=True)
        assert graph.meta["model"] == "pipeline" and graph.num_frames == reader.read_video(vid).num_frames
        assert len(graph.relations) <= 5
    split = list(predict_split(final, world / "4d", "test", limit=2, options=PredictOptions(max_candidates=5)))
    direct = PipelinePredictor.from_pretrained(final)
    assert [g.video_id for g in split] == ids
    assert [len(g.objects) for g in split] == [len(direct.predict(reader.read_video(v)).objects) for v in ids]


def test_a_long_video_streams_through_the_pipeline_in_windows(world, trained, tmp_path, monkeypatch):
    """A video longer than the relation model's timeline is predicted window by window (memory
    bounded by one window, as for the 4D-LLM) and stitched into one graph on its own timeline."""
    import av

    from psg4d.data.schema import SceneGraph4D

    reader = open_dataset(world / "4d")
    rgb = reader.read_video(reader.video_ids("test")[0]).rgb  # [4, H, W, 3]
    final = trained[0] / "final"
    assert PipelinePredictor.from_pretrained(final).max_frames == 64
    n = 150
    video = tmp_path / "long.mp4"
    with av.open(str(video), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.height, s.width, s.pix_fmt = rgb.shape[1], rgb.shape[2], "yuv420p"
        for t in range(n):  # the clip back and forth, so objects stay where they were
            k = t % 6
            frame = rgb[k if k < 4 else 6 - k]
            for pkt in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    seen: list[int] = []
    predict = PipelinePredictor.predict

    def spy(self, v, **kw):
        seen.append(v.num_frames)
        return predict(self, v, **kw)

    monkeypatch.setattr(PipelinePredictor, "predict", spy)
    out = tmp_path / "long.json"
    assert main(["predict", "--ckpt", str(final), "--rgb", str(video), "--out", str(out),
                 "--window", "40", "--stride", "30"]) == 0
    graph = SceneGraph4D.load(out)
    graph.validate(require_tubes=True)
    assert graph.num_frames == n and graph.meta["frame_indices"] == list(range(n))
    assert graph.meta["sampling"]["mode"] == "streaming" and graph.meta["model"] == "pipeline"
    assert graph.meta["streaming"]["num_windows"] == len(seen) == 5 and max(seen) == 40
    assert graph.objects and all(len(o.tube.rles) == n for o in graph.objects)


def test_llm_only_commands_refuse_a_pipeline_checkpoint_in_one_line(world, trained, tmp_path, capsys):
    final = str(trained[0] / "final")
    for argv, needle in (
        (["diagnose", "--ckpt", final, "--data", str(world / "4d"), "--split", "val"],
         "a pipeline baseline checkpoint; psg4d diagnose (it reads the LLM's text probabilities) needs a 4D-LLM"),
        (["tune-ranking", "--ckpt", final, "--data", str(world / "4d"), "--split", "val"],
         "a pipeline baseline checkpoint; psg4d tune-ranking (it weighs the LLM's text scores) needs a 4D-LLM"),
    ):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err
    assert not (trained[0] / "final" / "ranking.json").exists()


def test_without_two_tubes_anywhere_the_relation_stage_says_so(world, tmp_path, caplog):
    # one query: at most one segment per frame, so no video has a pair of tubes to relate
    cfg = load_pipeline_config(PRESET, _overrides(world, **{"segmenter.num_queries": 1, "segment_train.steps": 2}))
    with caplog.at_level(logging.WARNING, logger="psg4d.baseline.pipeline"):
        result = train_pipeline(cfg, out_dir=tmp_path / "run")
    assert "relation model stays untrained" in caplog.text
    assert result.stages[-1].extra == {"untrained": True} and result.stages[-1].steps == 0
    assert json.loads((tmp_path / "run" / "relation" / "final" / "trainer.json").read_text())["untrained"] is True


@pytest.mark.parametrize("stage, message", [("track", "run the segment stage first"),
                                            ("relation", "run the track stage first")])
def test_a_stage_run_alone_before_its_input_says_which_to_run(world, tmp_path, capsys, stage, message):
    argv = ["train", "--config", "pipeline_hoi_tiny", "--out", str(tmp_path / "r"), "--stage", stage]
    for s in _overrides(world):
        argv += ["--set", s]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def _small_pipeline(hidden: int = 32) -> tuple[PipelineConfig, dict[str, torch.nn.Module]]:
    """A pipeline config with small modules (built untrained, seeded) -> (config, modules by prefix)."""
    torch.manual_seed(0)
    cfg = PipelineConfig(
        segmenter=SegmenterConfig(class_names=["cup", "table", "hand"], image_size=32, widths=(8, 16, 16),
                                  hidden=hidden, ffn=32, num_queries=8),
        relation=RelationConfig(predicate_names=["on", "holding"], num_classes=3, feat_dim=16, hidden=16))
    return cfg, {"segmenter": QuerySegmenter(config=cfg.segmenter), "relation": RelationModel(config=cfg.relation)}


def _same_weights(predictor: PipelinePredictor, modules: dict[str, torch.nn.Module]) -> None:
    for prefix, module in modules.items():
        for k, v in getattr(predictor, prefix).state_dict().items():
            torch.testing.assert_close(v, module.state_dict()[k])


def test_pipeline_checkpoints_record_and_check_a_weights_sha256(tmp_path):
    cfg, modules = _small_pipeline()
    ck = save_modules(tmp_path / "ck", modules, to_dict(cfg), meta={"step": 5})
    weights = ck / "model.safetensors"
    meta = json.loads((ck / "trainer.json").read_text())
    assert meta[WEIGHTS_SHA256] == file_sha256(weights) and meta["step"] == 5
    assert WEIGHTS_SHA256 not in read_config(ck)  # config.json stays exactly the pipeline's config
    _same_weights(PipelinePredictor.from_pretrained(ck), modules)  # intact: loads, the same weights
    shutil.copytree(ck, tmp_path / "old")

    flip_middle_bytes(weights)
    assert_still_readable(weights)
    with pytest.raises(CheckpointError) as err:
        PipelinePredictor.from_pretrained(ck)
    msg = str(err.value)
    assert msg.startswith(f"{weights}: ") and "sha256 hash differs" in msg and "trainer.json" in msg, msg
    assert "\n" not in msg

    # a checkpoint written before the hash was recorded loads as before, unverified
    old = tmp_path / "old"
    meta = json.loads((old / "trainer.json").read_text())
    del meta[WEIGHTS_SHA256]
    (old / "trainer.json").write_text(json.dumps(meta))
    _same_weights(PipelinePredictor.from_pretrained(old), modules)


def test_pipeline_weights_of_other_sizes_are_one_line(tmp_path):
    cfg, modules = _small_pipeline(hidden=16)
    ck = save_modules(tmp_path / "ck", modules, to_dict(cfg))
    _, wider = _small_pipeline(hidden=32)
    with pytest.raises(CheckpointError) as err:
        load_modules(ck, {"segmenter": wider["segmenter"]})
    count, name, _, _ = size_mismatch_line(str(err.value), ck / "model.safetensors")
    theirs, ours = modules["segmenter"].state_dict(), wider["segmenter"].state_dict()
    differ = {f"segmenter.{k}" for k, v in ours.items() if k in theirs and theirs[k].shape != v.shape}
    assert count == len(differ) > 1 and name.startswith("segmenter.") and name in differ
