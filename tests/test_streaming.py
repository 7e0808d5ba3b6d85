"""Streaming inference: identities across windows, relations across borders, flat memory, atomic output."""

from __future__ import annotations

import gc
import json
import tracemalloc

import numpy as np
import pytest

from _fixtures_colour_baseline import ColourSegmentationPredictor, block_positions, moving_blocks
from psg4d.data.schema import MaskTube, ObjectTrack, Relation, SceneGraph4D, Video4D
from psg4d.errors import ConfigError, DataError
from psg4d.infer.streaming import StreamingPredictor
from psg4d.data.video_io import Frame, windows_from_frames


def _centroid_x(tube: MaskTube, t: int) -> float:
    return float(np.nonzero(tube.frame(t))[1].mean())


def test_colour_baseline_on_one_window():
    frames = list(moving_blocks(10, size=48, period=40))
    video = Video4D(
        rgb=np.stack([f.rgb for f in frames]), depth=np.stack([f.depth for f in frames]), frame_indices=np.arange(10)
    )
    g = ColourSegmentationPredictor().predict(video).validate()
    cats = {o.object_id: o.category for o in g.objects}
    assert sorted(cats.values()) == ["blue block", "green block", "red block"]
    red = next(o for o in g.objects if o.category == "red block")
    y, x = block_positions(3, size=48, block=8, period=40)["red block"]
    m = red.tube.frame(3)
    assert m[y : y + 8, x : x + 8].all() and m.sum() == 64
    trip = {(cats[r.subject_id], r.predicate, cats[r.object_id]) for r in g.relations}
    assert ("red block", "in front of", "blue block") in trip  # from depth
    assert ("red block", "above", "blue block") in trip
    assert ("blue block", "in front of", "red block") not in trip


def test_identity_kept_for_object_moving_across_window_borders(tmp_path):
    n, period = 120, 60  # red sweeps the whole width and back, crossing many window borders
    sp = StreamingPredictor(predict_window=ColourSegmentationPredictor().predict, window=12, stride=6, progress=False)
    summary = sp.run(moving_blocks(n, size=48, period=period), out_path=tmp_path / "g.json", video_id="blocks", fps=10)
    assert summary.num_windows == 19 and summary.num_frames == n
    g = summary.load()
    assert g.num_frames == n and g.meta["frame_indices"] == list(range(n))
    assert sorted(o.category for o in g.objects) == ["blue block", "green block", "red block"]  # 3 tracks, not 3x19
    red = next(o for o in g.objects if o.category == "red block")
    assert red.tube.present().all()
    xs = [_centroid_x(red.tube, t) for t in range(n)]
    expect = [block_positions(t, size=48, block=8, period=period)["red block"][1] + 3.5 for t in range(n)]
    assert np.allclose(xs, expect)


def test_relation_crossing_window_borders_is_one_span(tmp_path):
    sp = StreamingPredictor(predict_window=ColourSegmentationPredictor().predict, window=10, stride=4, progress=False)
    g = sp.run(moving_blocks(80, size=48, period=80), out_path=tmp_path / "g.json").load()
    ids = {o.category: o.object_id for o in g.objects}
    rel = {(r.subject_id, r.predicate, r.object_id): r for r in g.relations}
    # red is above blue in every frame: one span over ~20 windows, not one per window
    assert rel[(ids["red block"], "above", ids["blue block"])].spans == [(0, 79)]
    # left of / right of switch as red sweeps past blue; check against the geometry frame by frame
    left = rel[(ids["red block"], "left of", ids["blue block"])]
    truth = [block_positions(t, size=48, block=8, period=80)["red block"][1] + 7 < 20 for t in range(80)]
    assert set(left.frames().tolist()) == {t for t in range(80) if truth[t]}
    assert len(left.spans) == 2  # frames at the start and end of the sweep


class _ShufflingOracle:
    """Two same-category blocks on separate rows moving right; local ids reversed every other window,
    so only mask IoU can keep them apart."""

    def __init__(self):
        self.calls = 0

    def __call__(self, video: Video4D) -> SceneGraph4D:
        T = video.num_frames
        masks = np.zeros((2, T, 32, 32), dtype=bool)
        for t, src in enumerate(video.frame_indices):
            x = int(src) % 28
            masks[0, t, 2:6, x : x + 4] = True
            masks[1, t, 20:24, x : x + 4] = True
        order = [0, 1] if self.calls % 2 == 0 else [1, 0]
        self.calls += 1
        objs = [ObjectTrack(object_id=k, category="block", tube=MaskTube.from_dense(masks[o])) for k, o in enumerate(order)]
        # "above" holds for the top block only
        top_local = order.index(0)
        rel = Relation(top_local, 1 - top_local, "above", [(0, T - 1)], score=0.5 + 0.1 * (self.calls % 3))
        return SceneGraph4D(video_id="", num_frames=T, height=32, width=32, objects=objs, relations=[rel])


def _plain_frames(n: int, size: int = 32):
    for t in range(n):
        yield Frame(index=t, position=t, rgb=np.zeros((size, size, 3), np.uint8))


def test_hungarian_matching_keeps_same_category_objects_apart(tmp_path):
    oracle = _ShufflingOracle()
    sp = StreamingPredictor(predict_window=oracle, window=8, stride=5, progress=False)
    g = sp.run(_plain_frames(40), out_path=tmp_path / "g.json").load()
    assert len(g.objects) == 2
    for o in g.objects:
        rows = {int(np.nonzero(o.tube.frame(t))[0].mean()) for t in range(40)}
        assert len(rows) == 1  # never swapped to the other row
    (rel,) = g.relations
    top = next(o for o in g.objects if np.nonzero(o.tube.frame(0))[0].mean() < 10)
    assert rel.subject_id == top.object_id and rel.spans == [(0, 39)]
    assert rel.score == pytest.approx(0.7)  # max over windows


def test_low_iou_makes_a_new_track(tmp_path):
    def jumpy(video: Video4D) -> SceneGraph4D:
        # the object teleports between windows: no overlap, so no identity
        T = video.num_frames
        m = np.zeros((T, 16, 16), dtype=bool)
        x = 0 if video.frame_indices[0] < 4 else 10
        m[:, 0:4, x : x + 4] = True
        return SceneGraph4D(video_id="", num_frames=T, height=16, width=16,
                            objects=[ObjectTrack(object_id=0, category="cup", tube=MaskTube.from_dense(m))])

    g = StreamingPredictor(predict_window=jumpy, window=6, stride=4, progress=False).run(
        _plain_frames(10, 16), out_path=tmp_path / "g.json").load()
    assert len(g.objects) == 2
    a, b = g.objects
    # frames 4..5 are shared; the later window owns the second half of the overlap (frame 5 on)
    assert list(a.tube.present()) == [True] * 5 + [False] * 5
    assert list(b.tube.present()) == [False] * 5 + [True] * 5


def test_accepts_video_chunks_and_windows(tmp_path):
    frames = list(moving_blocks(30, size=32, period=30))
    chunks = [
        Video4D(rgb=np.stack([f.rgb for f in frames[i : i + 7]]), frame_indices=np.arange(i, min(i + 7, 30)))
        for i in range(0, 30, 7)
    ]
    sp = StreamingPredictor(predict_window=ColourSegmentationPredictor().predict, window=8, stride=4, progress=False)
    a = sp.run(chunks, out_path=tmp_path / "a.json").load()
    b = sp.run(windows_from_frames(iter(frames), window=8, stride=4), out_path=tmp_path / "b.json").load()
    c = sp.run(iter(frames), out_path=tmp_path / "c.json").load()
    assert a.to_json()["objects"] == c.to_json()["objects"] == b.to_json()["objects"]
    assert a.num_frames == 30


def test_bad_settings_and_failing_predictor_leave_nothing(tmp_path):
    with pytest.raises(ConfigError):
        StreamingPredictor(predict_window=lambda v: None, window=8, stride=8)
    with pytest.raises(ConfigError):
        StreamingPredictor(predict_window=lambda v: None, window=8, stride=0)

    def wrong_length(video: Video4D) -> SceneGraph4D:
        return SceneGraph4D(video_id="", num_frames=video.num_frames + 1, height=8, width=8)

    out = tmp_path / "out" / "g.json"
    with pytest.raises(DataError, match="has 9 frames, the window has 8"):
        StreamingPredictor(predict_window=wrong_length, window=8, stride=4, progress=False).run(
            _plain_frames(20, 8), out_path=out)
    assert list(out.parent.iterdir()) == []  # no output, no temp folder
    with pytest.raises(DataError, match="no frames"):
        StreamingPredictor(predict_window=wrong_length, window=8, stride=4, progress=False).run(
            iter([]), out_path=out)
    assert list(out.parent.iterdir()) == []


def _peak(n: int, path) -> int:
    sp = StreamingPredictor(predict_window=ColourSegmentationPredictor().predict, window=32, stride=16, progress=False)
    gc.collect()
    tracemalloc.start()
    try:
        sp.run(moving_blocks(n, size=32, period=100), out_path=path)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_flat_in_video_length(tmp_path):
    small = _peak(200, tmp_path / "a.json")
    large = _peak(2000, tmp_path / "b.json")
    assert large <= 1.5 * small, (small, large)
    # and the long output is complete
    d = json.loads((tmp_path / "b.json").read_text())
    assert d["num_frames"] == 2000 and all(len(o["tube"]["rles"]) == 2000 for o in d["objects"])


def test_real_model_predictor_plugs_in(tmp_path):
    """The model's window predictor (an untrained tiny PSG4DModel) runs under the streaming stitcher."""
    import torch

    from psg4d.infer import predictor as predictor_mod
    from psg4d.model.config import model_preset
    from psg4d.model.psg4d_llm import PSG4DModel

    torch.manual_seed(0)
    cfg = model_preset("tiny")
    cfg.object_vocab = ["red block", "blue block", "green block"]
    cfg.predicate_vocab = ["left of", "right of", "above", "below"]
    predictor = predictor_mod.Predictor(
        model=PSG4DModel.from_config(cfg), config=predictor_mod.PredictorConfig(max_new_tokens=12)
    )
    seen: list[tuple[int, SceneGraph4D]] = []

    def window_predict(video: Video4D) -> SceneGraph4D:
        g = predictor.predict(video)
        seen.append((int(video.frame_indices[0]), g))
        return g

    summary = StreamingPredictor(predict_window=window_predict, window=8, stride=4, progress=False).run(
        moving_blocks(12, size=32), out_path=tmp_path / "g.json", video_id="blocks")
    assert [s for s, _ in seen] == [0, 4]
    for _, g in seen:
        assert g.num_frames == 8 and (g.height, g.width) == (32, 32)
    out = summary.load()
    assert out.num_frames == 12 and out.video_id == "blocks" and out.meta["streaming"]["num_windows"] == 2
    # what the windows predicted is what was stitched: same objects per category, same predicates
    assert {o.category for o in out.objects} == {o.majority_category() for _, g in seen for o in g.objects}
    assert {r.predicate for r in out.relations} == {r.predicate for _, g in seen for r in g.relations}


def _leave_and_return(n: int = 48, size: int = 32, gone: range = range(12, 30), shift: int = 2):
    """A red block that leaves the scene and comes back a little to the right, and a blue block
    always there: the red one is absent across several window overlaps."""
    for t in range(n):
        rgb = np.full((size, size, 3), 90, np.uint8)
        rgb[20:28, 4:12] = (40, 60, 220)
        if t not in gone:
            x = 16 + (shift if t >= gone.stop else 0)
            rgb[4:12, x:x + 8] = (220, 40, 40)
        yield Frame(index=t, position=t, rgb=rgb)


def test_an_object_that_leaves_and_returns_keeps_its_identity(tmp_path):
    predictor = ColourSegmentationPredictor()
    g = StreamingPredictor(predict_window=predictor.predict, window=8, stride=6, progress=False).run(
        _leave_and_return(), out_path=tmp_path / "g.json").load()
    assert sorted(o.category for o in g.objects) == ["blue block", "red block"]
    red = next(o for o in g.objects if o.category == "red block")
    present = red.tube.present()
    assert present[:12].all() and not present[12:30].any() and present[30:].all()
    assert red.attributes == {"first_frame": 0, "last_frame": 47}
    assert g.meta["streaming"]["reentry_frames"] == 8 * 8
    # without the re-entry memory it comes back as a second red block
    again = StreamingPredictor(predict_window=predictor.predict, window=8, stride=6, progress=False,
                               reentry_windows=0).run(_leave_and_return(), out_path=tmp_path / "h.json").load()
    reds = sorted((o for o in again.objects if o.category == "red block"), key=lambda o: o.attributes["first_frame"])
    assert [(o.attributes["first_frame"], o.attributes["last_frame"]) for o in reds] == [(0, 11), (30, 47)]
    # ... and so it does, with the memory, when it comes back far from where it was last seen
    far = StreamingPredictor(predict_window=predictor.predict, window=8, stride=6, progress=False).run(
        _leave_and_return(size=64, shift=40), out_path=tmp_path / "f.json").load()
    assert len([o for o in far.objects if o.category == "red block"]) == 2
