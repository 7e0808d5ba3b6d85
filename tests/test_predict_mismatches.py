"""``psg4d predict`` keeps the README's promises (issue 25, item 5): every prediction path records
``meta["depth_source"]``, ``--candidates`` caps the whole video's relations (streamed and batch),
a container header that over-promises frames still gives ``--max-frames`` frames, and a dataset's
frame folder is named after its video so ``psg4d eval`` matches it.

The models are untrained tiny ones (built in seconds): with ``tag_words`` the tagging head names a
few objects in every window, so every window ranks a couple of hundred relations."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from psg4d.cli import main
from psg4d.data.schema import SceneGraph4D, Video4D
from psg4d.data.video_io import iter_frames, load_video, probe_video, select_positions
from psg4d.errors import DataError
from psg4d.infer.streaming import StreamingPredictor
from psg4d.model.psg4d_llm import PSG4DModel
from test_model_psg4d import tiny_config

STREAM = ["--window", "6", "--stride", "3"]  # 14 frames -> 4 windows of the model's 4 frames


def _save_model(path: Path, **kw) -> Path:
    torch.manual_seed(0)
    PSG4DModel.from_config(tiny_config(tag_words=True, tag_loss_weight=1.0, **kw)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return _save_model(tmp_path_factory.mktemp("mis") / "ck")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, Path]:
    """14 RGB frames and their depth (.npy metres): longer than the model's 4, so it streams."""
    root = tmp_path_factory.mktemp("clip")
    rgb, depth = root / "clip", root / "depth"
    rgb.mkdir()
    depth.mkdir()
    rng = np.random.default_rng(0)
    for t in range(14):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(rgb / f"{t:03d}.png")
        np.save(depth / f"{t:03d}.npy", np.full((32, 32), 0.5 + 0.05 * t, np.float32))
    return rgb, depth


def _predict(*args: str) -> None:
    assert main(["predict", *args]) == 0


# ------------------------------------------------------------------ 1. meta["depth_source"]
def test_streamed_predictions_record_the_depth_source(ckpt, clip, tmp_path):
    rgb, depth = clip
    est = tiny_config()
    est = dataclasses.replace(est, tag_words=True, tag_loss_weight=1.0,
                              transfer=dataclasses.replace(est.transfer, estimators=True))
    torch.manual_seed(0)
    PSG4DModel.from_config(est).save_pretrained(tmp_path / "est")
    for model, extra, expect in ((ckpt, ["--depth", str(depth)], "sensor"), (ckpt, [], "none"),
                                 (tmp_path / "est", [], "estimated")):
        out = tmp_path / f"{expect}.json"
        _predict("--ckpt", str(model), "--rgb", str(rgb), "--out", str(out), "--max-new-tokens", "8", *STREAM, *extra)
        pred = SceneGraph4D.load(out)
        assert pred.meta["sampling"]["mode"] == "streaming" and pred.meta["streaming"]["num_windows"] == 4
        assert pred.meta["depth_source"] == expect


def test_chain_mode_records_the_depth_source_streamed_too(clip, tmp_path):
    rgb, depth = clip
    ck = _save_model(tmp_path / "chain", chain_prob=1.0)
    for extra, expect in ((["--depth", str(depth)], "sensor"), ([], "none")):
        for window in (["--max-frames", "4"], STREAM):  # one pass, and streamed
            out = tmp_path / f"{expect}{len(window)}.json"
            _predict("--ckpt", str(ck), "--rgb", str(rgb), "--out", str(out), "--mode", "chain",
                     "--max-new-tokens", "6", *window, *extra)
            pred = SceneGraph4D.load(out)
            assert pred.meta["mode"] == "chain" and pred.meta["depth_source"] == expect, window


def test_windows_that_disagree_on_depth_are_named(tmp_path, caplog):
    def window(video: Video4D) -> SceneGraph4D:
        source = "sensor" if video.frame_indices[0] < 6 else "estimated"
        return SceneGraph4D(video_id="v", num_frames=video.num_frames, height=8, width=8,
                            meta={"depth_source": source})

    frames = Video4D(rgb=np.zeros((12, 8, 8, 3), np.uint8))
    sp = StreamingPredictor(predict_window=window, window=6, stride=3, progress=False)
    with caplog.at_level(logging.WARNING):
        got = sp.run([frames], out_path=tmp_path / "g.json", video_id="v").load()
    assert got.meta["depth_source"] == "mixed"
    assert got.meta["depth_source_windows"] == {"sensor": [0, 3], "estimated": [6]}
    assert "windows disagree" in caplog.text


def _pipeline_ckpt(path: Path, *, use_depth: bool) -> Path:
    from psg4d.baseline.checkpoint import save_modules
    from psg4d.baseline.config import PipelineConfig, RelationConfig, SegmenterConfig
    from psg4d.baseline.relation import RelationModel
    from psg4d.baseline.segmenter import QuerySegmenter
    from psg4d.config import to_dict

    torch.manual_seed(0)
    classes, preds = ["cup", "table", "hand"], ["on", "holding"]
    cfg = PipelineConfig(
        segmenter=SegmenterConfig(class_names=classes, image_size=32, widths=(8, 16, 16), hidden=16, ffn=32,
                                  num_queries=8, use_depth=use_depth),
        relation=RelationConfig(predicate_names=preds, num_classes=len(classes), feat_dim=16, hidden=16))
    return save_modules(path, {"segmenter": QuerySegmenter(config=cfg.segmenter),
                               "relation": RelationModel(config=cfg.relation)}, to_dict(cfg))


def test_pipeline_baseline_records_the_depth_source(clip, tmp_path):
    rgb, depth = clip
    with_depth = _pipeline_ckpt(tmp_path / "pipe", use_depth=True)
    without = _pipeline_ckpt(tmp_path / "pipe_nodepth", use_depth=False)
    # the depth branch reads the sensor only when the checkpoint has one and depth is given
    for ck, extra, expect in ((with_depth, ["--depth", str(depth)], "sensor"), (with_depth, [], "none"),
                              (without, ["--depth", str(depth)], "none")):
        out = tmp_path / f"{ck.name}_{len(extra)}.json"
        _predict("--ckpt", str(ck), "--rgb", str(rgb), "--out", str(out), *extra)
        pred = SceneGraph4D.load(out)
        assert pred.meta["model"] == "pipeline" and pred.meta["depth_source"] == expect


# ------------------------------------------------------------------ 2. --candidates caps the video
def _keys(pred: SceneGraph4D) -> list[tuple]:
    return [(r.subject_id, r.object_id, r.predicate, round(r.score, 5)) for r in pred.relations]


def test_candidates_cap_the_whole_streamed_video(ckpt, clip, tmp_path):
    rgb, _ = clip
    capped, full = tmp_path / "capped.json", tmp_path / "full.json"
    common = ["--ckpt", str(ckpt), "--rgb", str(rgb), "--max-new-tokens", "8", *STREAM]
    _predict(*common, "--out", str(full), "--candidates", "100000")
    _predict(*common, "--out", str(capped), "--candidates", "30")
    full_g, capped_g = SceneGraph4D.load(full), SceneGraph4D.load(capped)
    assert len(full_g.relations) > 4 * 30  # every window alone fills the cap
    assert len(capped_g.relations) == 30 and capped_g.meta["streaming"]["max_relations"] == 30
    # the best 30 of the stitched video, in order; every object is kept (the panoptic segmentation)
    assert _keys(capped_g) == _keys(full_g)[:30]
    assert [o.object_id for o in capped_g.objects] == [o.object_id for o in full_g.objects]
    capped_g.validate(require_tubes=True)


def _mp4(path: Path, n: int, *, keep: int | None = None, hw: tuple[int, int] = (32, 32)) -> Path:
    """An mp4 of ``n`` noise frames; ``keep``: cut the file after that many frames' data, so its
    header (written first: faststart) still promises ``n``."""
    rng = np.random.default_rng(1)
    full = path.with_suffix(".full.mp4") if keep is not None else path
    with av.open(str(full), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("mpeg4", rate=10)
        s.height, s.width, s.pix_fmt = hw[0], hw[1], "yuv420p"
        for _ in range(n):
            img = rng.integers(0, 255, (*hw, 3), dtype=np.uint8)
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    if keep is None:
        return path
    with av.open(str(full)) as c:
        sizes = [p.size for p in c.demux(c.streams.video[0]) if p.size]
    data = full.read_bytes()
    full.unlink()
    # with faststart every byte before the samples is header: cut after the first `keep` samples
    path.write_bytes(data[: len(data) - sum(sizes) + sum(sizes[:keep])])
    return path


def test_candidates_cap_every_video_of_a_batch(ckpt, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a", "b"):
        _mp4(videos / f"{name}.mp4", 14)
    out = tmp_path / "preds"
    _predict("--ckpt", str(ckpt), "--rgb", str(videos), "--out", str(out), "--max-new-tokens", "8",
             "--candidates", "30", "--workers", "1", *STREAM)
    for name in ("a", "b"):
        pred = SceneGraph4D.load(out / f"{name}.json")
        assert len(pred.relations) == 30 and pred.video_id == name
        assert pred.meta["streaming"]["num_windows"] == 4 and pred.meta["streaming"]["relations_stitched"] > 30


# ------------------------------------------------------------------ 3. a header that over-promises
def test_max_frames_spread_over_the_frames_that_decode(ckpt, tmp_path, caplog):
    """A header a frame or two over the frames that decode (a badly muxed but whole file) is
    tolerated: frames are chosen over those that decode, with one warning."""
    video = _mp4(tmp_path / "cut.mp4", 62, keep=60)
    assert probe_video(video).num_frames == 62  # the header's promise
    expect = select_positions(60, source_fps=10, max_frames=16).tolist()
    with caplog.at_level(logging.WARNING):
        got = load_video(video, max_frames=16)
    assert got.frame_indices.tolist() == expect and got.num_frames == 16
    lines = [r.getMessage() for r in caplog.records if "promised" in r.getMessage()]
    assert len(lines) == 1 and "62" in lines[0] and "60 decode" in lines[0], lines
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert sum(1 for _ in iter_frames(video)) == 60  # a streamed read says it once too
    assert sum("promised 62" in r.getMessage() for r in caplog.records) == 1

    out = tmp_path / "pred.json"
    _predict("--ckpt", str(ckpt), "--rgb", str(video), "--out", str(out), "--max-frames", "16",
             "--max-new-tokens", "8")
    pred = SceneGraph4D.load(out)
    assert pred.num_frames == 16 and pred.meta["frame_indices"] == expect


def test_a_truncated_file_is_refused_not_read_as_a_shorter_video(ckpt, tmp_path, capsys):
    """A header that promises 64 frames of which one decodes: one line naming the file (exit 2),
    for a whole read, a sampled read and a streamed read alike."""
    video = _mp4(tmp_path / "cut.mp4", 64, keep=1)
    with pytest.raises(DataError, match="promises 64 frames but only 1 decode"):
        load_video(video)
    with pytest.raises(DataError, match="truncated or damaged"):
        load_video(video, max_frames=16)
    with pytest.raises(DataError, match="promises 64 frames"):
        list(iter_frames(video))
    out = tmp_path / "pred.json"
    capsys.readouterr()
    code = main(["predict", "--ckpt", str(ckpt), "--rgb", str(video), "--out", str(out), "--max-new-tokens", "8"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "%|" not in line]  # no progress bar
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {video}") and "only 1 decode" in err[0], err
    assert not out.exists()


# ------------------------------------------------------------------ 4. the video id
def test_a_dataset_frame_folder_is_named_after_its_video_and_eval_matches_it(ckpt, tmp_path, capsys):
    from psg4d.data.readers import open_dataset
    from psg4d.data.synth import SynthConfig, generate

    generate(SynthConfig(videos=3, images=0, frames=4, size=32, workers=1, shadows=False), tmp_path / "ds",
             progress=False)
    data = tmp_path / "ds" / "4d"
    vid = open_dataset(data).video_ids("test")[0]
    frames = data / "HOI4D_release" / vid / "align_rgb"
    depth = data / "HOI4D_depth_video" / vid / "align_depth"
    out = tmp_path / "pred.json"
    _predict("--ckpt", str(ckpt), "--rgb", str(frames), "--depth", str(depth), "--out", str(out),
             "--max-new-tokens", "8")
    assert SceneGraph4D.load(out).video_id == vid
    capsys.readouterr()
    assert main(["eval", "--pred", str(out), "--gt", str(data), "--split", "test", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_videos"] == 1 and result["num_missing_predictions"] == 0

    named = tmp_path / "named.json"
    _predict("--ckpt", str(ckpt), "--rgb", str(frames), "--out", str(named), "--video-id", "my clip",
             "--max-new-tokens", "8")
    assert SceneGraph4D.load(named).video_id == "my clip"


def test_default_video_ids_and_the_batch_refusal(ckpt, tmp_path, capsys):
    from psg4d.infer.video_predict import default_video_id

    for name in ("rgb", "frames", "Images", "shot_7"):
        (tmp_path / "v1" / name).mkdir(parents=True)
    assert default_video_id(tmp_path / "v1" / "rgb") == "v1"
    assert default_video_id(tmp_path / "v1" / "Images") == "v1"
    assert default_video_id(tmp_path / "v1" / "shot_7") == "shot_7"  # a folder named after its video
    assert default_video_id(tmp_path / "v1" / "frames.mp4") == "frames"  # a file: its stem
    videos = tmp_path / "videos"
    videos.mkdir()
    _mp4(videos / "a.mp4", 4)
    capsys.readouterr()
    assert main(["predict", "--ckpt", str(ckpt), "--rgb", str(videos), "--out", str(tmp_path / "o"),
                 "--video-id", "x"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "--video-id names one video" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "o").exists()
