"""``psg4d predict`` / ``psg4d viz`` on bad input: one clear line naming the file and the problem,
exit 2, nothing written; checks that need no model run before the model is loaded."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from psg4d.cli import main
from psg4d.data.depth_io import DepthSource
from psg4d.data.schema import SceneGraph4D
from psg4d.errors import DataError
from psg4d.model.psg4d_llm import PSG4DModel
from test_model_psg4d import tiny_config


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("bad") / "ck"
    PSG4DModel.from_config(tiny_config()).save_pretrained(path)
    return path


@pytest.fixture
def no_model(monkeypatch):
    """Loading the model fails the test: the check under test must come first."""
    def refuse(*_a, **_k):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(PSG4DModel, "from_pretrained", classmethod(lambda cls, *a, **k: refuse()))


def _frames(folder: Path, n: int, size: int = 32, ext: str = "png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for t in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"f_{t}.{ext}")
    return folder


def _mp4(path: Path, n: int = 6, hw: tuple[int, int] = (32, 48)) -> Path:
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.height, s.width, s.pix_fmt = hw[0], hw[1], "yuv420p"
        for t in range(n):
            img = np.full((*hw, 3), (t * 30) % 256, dtype=np.uint8)
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path


def _one_error_line(capsys, *needles: str) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1, err
    for n in needles:
        assert n in err[0], err[0]
    assert "Traceback" not in err[0]
    return err[0]


def _unreadable(tmp_path: Path) -> dict[str, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    good = _mp4(tmp_path / "good.mp4")
    (tmp_path / "text.mp4").write_text("not a video\n")
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "cut.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "0.png").write_text("not an image")
    (tmp_path / "no_frames").mkdir()
    return {"text.mp4": tmp_path / "text.mp4", "empty.mp4": tmp_path / "empty.mp4", "cut.mp4": tmp_path / "cut.mp4",
            "0.png": imgs, "no_frames": tmp_path / "no_frames", "missing.mp4": tmp_path / "missing.mp4"}


def test_unreadable_videos_fail_with_one_line(tmp_path, capsys, no_model):
    ckpt = tmp_path  # never loaded: the video is probed first
    for name, src in _unreadable(tmp_path).items():
        out = tmp_path / f"out_{name}.json"
        assert main(["predict", "--ckpt", str(ckpt), "--rgb", str(src), "--out", str(out)]) == 2, name
        _one_error_line(capsys, name)
        assert not out.exists()


@pytest.mark.parametrize("flag,value,needle", [
    ("--fps", "0", "--fps must be positive"), ("--size", "0", "--size must be positive"),
    ("--max-frames", "0", "--max-frames must be positive"), ("--fps", "-3", "--fps must be positive"),
    ("--window", "1", "--window"), ("--candidates", "0", "--candidates"),
])
def test_impossible_flags_are_refused_before_the_model_loads(tmp_path, capsys, no_model, flag, value, needle):
    frames = _frames(tmp_path / "rgb", 3)
    out = tmp_path / "pred.json"
    assert main(["predict", "--ckpt", str(tmp_path), "--rgb", str(frames), "--out", str(out), flag, value]) == 2
    _one_error_line(capsys, needle)
    assert not out.exists()


def test_stride_must_leave_windows_overlapping(tmp_path, capsys, no_model):
    frames = _frames(tmp_path / "rgb", 3)
    args = ["predict", "--ckpt", str(tmp_path), "--rgb", str(frames), "--out", str(tmp_path / "p.json")]
    assert main([*args, "--window", "8", "--stride", "8"]) == 2
    _one_error_line(capsys, "--stride (8) must be smaller than --window (8)")


def test_unwritable_out_is_refused_before_the_work(tmp_path, capsys, no_model):
    frames = _frames(tmp_path / "rgb", 3)
    (tmp_path / "afile").write_text("x")
    for out, needle in ((tmp_path / "afile" / "pred.json", "is a file, not a folder"),
                        (tmp_path / "rgb", "--out is a folder")):
        assert main(["predict", "--ckpt", str(tmp_path), "--rgb", str(frames), "--out", str(out)]) == 2
        _one_error_line(capsys, str(out), needle)
    videos = tmp_path / "videos"
    videos.mkdir()
    _mp4(videos / "a.mp4")
    assert main(["predict", "--ckpt", str(tmp_path), "--rgb", str(videos), "--out", str(tmp_path / "afile")]) == 2
    _one_error_line(capsys, "afile", "--out must be a folder (one file per input)")


def _depth_folder(folder: Path, maps: list[np.ndarray]) -> Path:
    folder.mkdir()
    for t, d in enumerate(maps):
        np.save(folder / f"d_{t}.npy", d)
    return folder


@pytest.mark.parametrize("kind,value,needle", [
    ("negative", -2.0, "no valid depth"), ("nan", np.nan, "no valid depth"), ("huge", 1e30, "not metres"),
])
def test_depth_without_valid_values_is_refused(tmp_path, capsys, no_model, kind, value, needle):
    ckpt = tmp_path  # never loaded: depth is probed first
    frames = _frames(tmp_path / "rgb", 3)
    depth = _depth_folder(tmp_path / "depth", [np.full((32, 32), value, dtype=np.float32)] * 3)
    out = tmp_path / "pred.json"
    assert main(["predict", "--ckpt", str(ckpt), "--rgb", str(frames), "--depth", str(depth), "--out", str(out)]) == 2
    _one_error_line(capsys, "depth", needle)
    assert not out.exists()


def test_partly_invalid_depth_is_read_as_unknown_with_a_warning(tmp_path, caplog):
    d = np.full((8, 8), 2.0, dtype=np.float32)
    d[0, :4] = -1.0
    d[1, :2] = np.nan
    src = DepthSource(_depth_folder(tmp_path / "depth", [d, np.full((8, 8), -1.0, dtype=np.float32)]))
    with caplog.at_level(logging.WARNING):
        src.check_sample(2, (8, 8))  # one probed map has depth: accepted
        got = src.read(0, (8, 8))
        empty = src.read(1, (8, 8))
    assert (got[0, :4] == 0).all() and (got[1, :2] == 0).all() and (got[2:] == 2.0).all()
    assert not empty.any()
    text = caplog.text
    assert "negative depth values" in text and "d_1.npy holds no valid depth" in text
    with pytest.raises(DataError, match="not metres"):
        DepthSource(_depth_folder(tmp_path / "mm", [d * 1e6])).read(0, (8, 8))


def test_large_frames_are_read_at_the_models_size(ckpt, tmp_path):
    frames = _frames(tmp_path / "big", 2, size=600, ext="jpg")
    out = tmp_path / "pred.json"
    assert main(["predict", "--ckpt", str(ckpt), "--rgb", str(frames), "--out", str(out), "--max-new-tokens", "8"]) == 0
    pred = SceneGraph4D.load(out)
    # read at tiny_config's image_size (32), not the file's 600; the masks go back to the source size
    assert pred.meta["sampling"]["source_size"] == [600, 600] and pred.meta["sampling"]["size"] == [32, 32]
    assert (pred.height, pred.width) == (600, 600) and pred.meta["sampling"]["mask_size"] == [600, 600]
    assert all(o.tube.height == 600 and o.tube.width == 600 for o in pred.objects)
    # an explicit --size is what the user asked for: frames and masks at that size
    out2 = tmp_path / "pred48.json"
    assert main(["predict", "--ckpt", str(ckpt), "--rgb", str(frames), "--out", str(out2), "--max-new-tokens", "8",
                 "--size", "48"]) == 0
    pred2 = SceneGraph4D.load(out2)
    assert (pred2.height, pred2.width) == (48, 48) and pred2.meta["sampling"]["size"] == [48, 48]


def test_decoding_a_4000x3000_frame_never_holds_it_at_full_size(tmp_path):
    """A full 4000x3000 RGB frame is 36 MB; decoded straight at 64 px (JPEG draft mode, PyAV's
    scaler) the peak memory of reading grows by far less."""
    folder = tmp_path / "huge"
    folder.mkdir()
    big = np.random.default_rng(0).integers(0, 255, (3000, 4000, 3), dtype=np.uint8)
    for t in range(3):
        Image.fromarray(big).save(folder / f"f_{t}.jpg", quality=90)
    del big
    script = textwrap.dedent(f"""
        import resource
        from psg4d.data.video_io import iter_frames, probe_video
        info = probe_video({str(folder)!r})
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        shapes = [f.rgb.shape for f in iter_frames({str(folder)!r}, size=64, info=info)]
        grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(shapes[0], len(shapes), grew // 1024)
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    shape, n, grew_mb = res.stdout.rsplit(" ", 2)[0], int(res.stdout.split()[-2]), int(res.stdout.split()[-1])
    assert shape.startswith("(64, 85, 3)") and n == 3
    assert grew_mb < 20, f"reading grew the peak RSS by {grew_mb} MB"


def test_batch_goes_past_a_bad_video_and_resumes(ckpt, tmp_path, capsys, caplog):
    videos = tmp_path / "videos"
    videos.mkdir()
    _mp4(videos / "a.mp4")
    (videos / "b.mp4").write_text("not a video")
    _mp4(videos / "c.mp4", n=5)
    out = tmp_path / "preds"
    args = ["predict", "--ckpt", str(ckpt), "--rgb", str(videos), "--out", str(out), "--max-new-tokens", "8",
            "--workers", "1"]
    assert main(args) == 2
    _one_error_line(capsys, "1 of 3 videos failed", "b.mp4")
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "c.json"]
    assert SceneGraph4D.load(out / "c.json").num_frames == 5
    stamp = (out / "a.json").stat().st_mtime_ns
    with caplog.at_level(logging.INFO):
        assert main(args) == 2  # b still fails; a and c are not predicted again
    assert "skipping 2 finished video(s)" in caplog.text
    assert (out / "a.json").stat().st_mtime_ns == stamp


def test_batch_shards_by_torchrun_rank_and_over_local_workers(ckpt, tmp_path, monkeypatch):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name, n in (("a", 4), ("b", 5), ("c", 6)):
        _mp4(videos / f"{name}.mp4", n=n)
    (videos / "d.mp4").write_text("not a video")
    base = ["predict", "--ckpt", str(ckpt), "--rgb", str(videos), "--max-new-tokens", "8"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    # rank 1 of 2 takes videos 1 and 3 (b, d); its bad video is listed, and the exit is 0 so that
    # torchrun does not stop the other ranks
    assert main([*base, "--out", str(tmp_path / "ranked"), "--workers", "3"]) == 0
    assert sorted(p.name for p in (tmp_path / "ranked").iterdir()) == ["b.json", "failed.rank1.txt"]
    assert (tmp_path / "ranked" / "failed.rank1.txt").read_text().startswith(f"{videos / 'd.mp4'}\t")
    monkeypatch.setenv("RANK", "0")
    assert main([*base, "--out", str(tmp_path / "ranked")]) == 0
    assert sorted(p.name for p in (tmp_path / "ranked").glob("*.json")) == ["a.json", "b.json", "c.json"]
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    # outside torchrun: two spawned worker processes share the videos; the bad one fails the command
    assert main([*base, "--out", str(tmp_path / "local"), "--workers", "2", "--threads", "1"]) == 2
    for name, n in (("a", 4), ("b", 5), ("c", 6)):
        a = SceneGraph4D.load(tmp_path / "local" / f"{name}.json")
        b = SceneGraph4D.load(tmp_path / "ranked" / f"{name}.json")
        assert a.num_frames == n and a.meta["frame_indices"] == list(range(n))
        assert [o.category for o in a.objects] == [o.category for o in b.objects]


def test_viz_refuses_bad_flags_unreadable_videos_and_unwritable_outputs(ckpt, tmp_path, capsys):
    frames = _frames(tmp_path / "rgb", 3)
    pred = tmp_path / "pred.json"
    assert main(["predict", "--ckpt", str(ckpt), "--rgb", str(frames), "--out", str(pred),
                 "--max-new-tokens", "8"]) == 0
    capsys.readouterr()
    html = tmp_path / "r.html"
    (tmp_path / "afile").write_text("x")
    for extra, needle in ((["--fps", "0"], "--fps must be positive"), (["--max-frames", "0"], "--max-frames"),
                          (["--top-k", "0"], "--top-k"),
                          (["--gif", str(tmp_path / "afile" / "o.gif")], "afile is a file, not a folder")):
        assert main(["viz", str(pred), "--video", str(frames), "--out", str(html), *extra]) == 2
        _one_error_line(capsys, needle)
        assert not html.exists()
    for name, src in _unreadable(tmp_path / "bad").items():
        assert main(["viz", str(pred), "--video", str(src), "--out", str(html)]) == 2, name
        _one_error_line(capsys, name)
        assert not html.exists()
    # a video shorter than the frames the prediction recorded is named, not a traceback
    short = _frames(tmp_path / "short", 2)
    assert main(["viz", str(pred), "--video", str(short), "--out", str(html)]) == 2
    _one_error_line(capsys, "short", "source frame 2 but the video has 2 frames")


def test_single_video_under_torchrun_is_predicted_by_rank_zero_only(tmp_path, monkeypatch, no_model):
    """Every rank running the same line on one video must not race to write the same file: ranks
    above 0 return before loading anything (``no_model`` fails the test if they load the model)."""
    video = _mp4(tmp_path / "one.mp4", n=4)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    out = tmp_path / "one.json"
    assert main(["predict", "--ckpt", str(tmp_path / "ck"), "--rgb", str(video), "--out", str(out)]) == 0
    assert not out.exists()
