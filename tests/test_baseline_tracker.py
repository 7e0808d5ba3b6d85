"""The pipeline baseline's tracker on hand-made segments: squares moving on a 32x32 grid, each object
with its own unit embedding (orthogonal to the others) plus a little noise."""

from __future__ import annotations

import numpy as np
import pytest

from psg4d.baseline.config import TrackerConfig
from psg4d.baseline.tracker import Tracker
from psg4d.baseline.types import GEOMETRY_DIM, FrameDetections, TrackedTubes

H = W = 32
C = 4  # classes
D = 16  # embedding width


def _embeds(n: int, seed: int = 0) -> np.ndarray:
    """``[n, D]`` orthonormal embeddings (cosine 0 between different objects)."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(D, D)))
    return q[:n].astype(np.float32)


def _square(x: int, y: int, size: int = 6) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[max(y, 0):max(y + size, 0), max(x, 0):max(x + size, 0)] = True
    return m


def _frame(objs: list[dict], rng: np.random.Generator | None = None, noise: float = 0.05) -> FrameDetections:
    """One frame from ``objs`` (each: mask, embed, and optional label, score, probs), best first."""
    if not objs:
        return FrameDetections.empty(H, W, C, D)
    rng = rng or np.random.default_rng(0)
    embeds = np.stack([o["embed"] + noise * rng.normal(size=D) for o in objs]).astype(np.float32)
    probs = []
    for o in objs:
        p = np.full(C, 0.02, np.float32)
        p[o.get("label", 0)] = 0.9
        probs.append(o.get("probs", p))
    return FrameDetections(masks=np.stack([o["mask"] for o in objs]),
                           labels=np.array([o.get("label", 0) for o in objs], np.int64),
                           scores=np.array([o.get("score", 0.9) for o in objs], np.float32),
                           class_probs=np.stack(probs).astype(np.float32), embeds=embeds)


def _tube_of(tubes: TrackedTubes, frame: int, mask: np.ndarray) -> int:
    """Index of the tube holding exactly ``mask`` in ``frame``."""
    hits = [i for i in range(len(tubes)) if tubes.valid[i, frame] and np.array_equal(tubes.masks[i, frame], mask)]
    assert len(hits) == 1, hits
    return hits[0]


def _check_shapes(tubes: TrackedTubes, n: int, t: int) -> None:
    assert tubes.masks.shape == (n, t, H, W) and tubes.masks.dtype == bool
    assert tubes.valid.shape == (n, t) and tubes.valid.dtype == bool
    assert tubes.feats.shape == (n, t, D) and tubes.feats.dtype == np.float32
    assert tubes.geometry.shape == (n, t, GEOMETRY_DIM) and tubes.geometry.dtype == np.float32
    assert tubes.class_probs.shape == (n, C)
    assert tubes.labels.shape == (n,) and tubes.frame_labels.shape == (n, t) and tubes.scores.shape == (n,)
    # nothing leaks into frames a tube does not have
    assert not tubes.masks[~tubes.valid].any()
    assert not tubes.feats[~tubes.valid].any() and not tubes.geometry[~tubes.valid].any()
    assert (tubes.frame_labels[~tubes.valid] == -1).all() and (tubes.frame_labels[tubes.valid] >= 0).all()


# --- identities ------------------------------------------------------------------------------------

def _crossing_video() -> tuple[list[FrameDetections], list[np.ndarray], list[np.ndarray]]:
    """A moves right and B left along the same rows; in frame 3 they overlap (A in front).

    In frame 3 A's mask overlaps B's frame-2 mask more than its own (IoU 0.5 vs 0.2) and B's visible
    sliver lies inside A's frame-2 mask, so mask IoU alone swaps them."""
    ea, eb = _embeds(2)
    rng = np.random.default_rng(1)
    frames, a_masks, b_masks = [], [], []
    for t in range(6):
        a = _square(2 + 4 * t, 10)
        b = _square(24 - 4 * t, 10) & ~a  # panoptic: no overlap, A occludes B
        frames.append(_frame([{"mask": a, "embed": ea}, {"mask": b, "embed": eb}], rng))
        a_masks.append(a)
        b_masks.append(b)
    return frames, a_masks, b_masks


def test_crossing_paths_keep_identities():
    frames, a_masks, b_masks = _crossing_video()
    tubes = Tracker(config=TrackerConfig()).track(frames)
    _check_shapes(tubes, 2, 6)
    assert tubes.valid.all()
    ia, ib = _tube_of(tubes, 0, a_masks[0]), _tube_of(tubes, 0, b_masks[0])
    assert ia != ib
    for t in range(6):
        assert np.array_equal(tubes.masks[ia, t], a_masks[t])
        assert np.array_equal(tubes.masks[ib, t], b_masks[t])
    # feats are the frames' own segment embeddings
    for t in range(6):
        np.testing.assert_array_equal(tubes.feats[ia, t], frames[t].embeds[0])


def test_crossing_paths_swap_without_the_embedding_term():
    """The control: on mask IoU alone the same video swaps identities at the crossing (frame-to-frame
    IoU of a moving square is 0.2, hence the lower threshold)."""
    frames, a_masks, b_masks = _crossing_video()
    tubes = Tracker(config=TrackerConfig(iou_weight=1.0, match_threshold=0.1)).track(frames)
    assert len(tubes) == 2 and tubes.valid.all()
    ia = _tube_of(tubes, 0, a_masks[0])
    assert np.array_equal(tubes.masks[ia, 2], a_masks[2])
    assert np.array_equal(tubes.masks[ia, 3], b_masks[3])


def test_occlusion_within_max_missing_keeps_the_tube():
    e, e_static = _embeds(2)
    present = [True, True, True, False, False, True, True, True]  # absent 2 frames, max_missing = 4
    frames = []
    for t, here in enumerate(present):
        objs = [{"mask": _square(20, 20), "embed": e_static, "label": 1}]
        if here:
            objs.append({"mask": _square(2 + t, 4), "embed": e})
        frames.append(_frame(objs, np.random.default_rng(t)))
    tubes = Tracker(config=TrackerConfig(max_missing=4)).track(frames)
    _check_shapes(tubes, 2, 8)
    i = _tube_of(tubes, 0, _square(2, 4))
    assert tubes.valid[i].tolist() == present
    assert np.array_equal(tubes.masks[i, 5], _square(7, 4))
    assert tubes.valid[1 - i].all()


def _reentry_video(same_embed: bool) -> tuple[list[FrameDetections], np.ndarray]:
    """An object in frames 0-2, gone 3-5 (3 frames > max_missing = 1), back elsewhere in 6-8."""
    e, other = _embeds(2, seed=3)
    back = e if same_embed else other
    frames = []
    for t in range(9):
        if t < 3:
            objs = [{"mask": _square(2, 2), "embed": e}]
        elif t < 6:
            objs = []
        else:
            objs = [{"mask": _square(22, 22), "embed": back}]  # far away: no mask overlap
        frames.append(_frame(objs, np.random.default_rng(t)))
    return frames, e


def test_reentry_with_the_same_embedding_resumes_the_tube():
    frames, _ = _reentry_video(same_embed=True)
    tubes = Tracker(config=TrackerConfig(max_missing=1, reentry_similarity=0.8)).track(frames)
    _check_shapes(tubes, 1, 9)
    assert tubes.valid[0].tolist() == [True] * 3 + [False] * 3 + [True] * 3


def test_reentry_with_another_embedding_starts_a_new_tube():
    frames, _ = _reentry_video(same_embed=False)
    tubes = Tracker(config=TrackerConfig(max_missing=1, reentry_similarity=0.8)).track(frames)
    _check_shapes(tubes, 2, 9)
    assert tubes.valid[0].tolist() == [True] * 3 + [False] * 6
    assert tubes.valid[1].tolist() == [False] * 6 + [True] * 3


def test_ended_track_is_not_matched_on_mask_overlap():
    """Back in the same place with another appearance after max_missing: a new tube, not the old one."""
    e, other = _embeds(2, seed=5)
    frames = [_frame([{"mask": _square(4, 4), "embed": e}]) for _ in range(2)]
    frames += [_frame([]) for _ in range(2)]
    frames += [_frame([{"mask": _square(4, 4), "embed": other}]) for _ in range(2)]
    tubes = Tracker(config=TrackerConfig(max_missing=1)).track(frames)
    assert tubes.valid.tolist() == [[True, True, False, False, False, False],
                                    [False, False, False, False, True, True]]
    # with max_missing = 2 the old track is still alive and mask IoU 1 links it (0.5 * 1 >= 0.3)
    tubes = Tracker(config=TrackerConfig(max_missing=2)).track(frames)
    assert tubes.valid.tolist() == [[True, True, False, False, True, True]]


# --- birth, length, class --------------------------------------------------------------------------

def test_low_score_segment_never_starts_a_track_but_can_continue_one():
    e_low, e_cont = _embeds(2)
    frames = []
    for t in range(5):
        frames.append(_frame([
            {"mask": _square(2, 2), "embed": e_low, "score": 0.3},  # below birth_score, every frame
            {"mask": _square(16, 16), "embed": e_cont, "score": 0.9 if t == 0 else 0.2},
        ], np.random.default_rng(t)))
    tubes = Tracker(config=TrackerConfig(birth_score=0.5)).track(frames)
    _check_shapes(tubes, 1, 5)
    assert tubes.valid[0].all()
    assert np.array_equal(tubes.masks[0, 0], _square(16, 16))
    assert tubes.scores[0] == pytest.approx((0.9 + 4 * 0.2) / 5)


def test_min_length_drops_a_one_frame_flicker():
    e, flick = _embeds(2)
    frames = []
    for t in range(4):
        objs = [{"mask": _square(2, 2), "embed": e}]
        if t == 2:
            objs.append({"mask": _square(20, 20), "embed": flick, "score": 1.0})
        frames.append(_frame(objs, np.random.default_rng(t)))
    tubes = Tracker(config=TrackerConfig(min_length=2)).track(frames)
    _check_shapes(tubes, 1, 4)
    assert np.array_equal(tubes.masks[0, 2], _square(2, 2))
    assert len(Tracker(config=TrackerConfig(min_length=1)).track(frames)) == 2


def test_class_aware_forbids_a_class_change():
    e = _embeds(1)[0]
    frames = [_frame([{"mask": _square(8, 8), "embed": e, "label": 0 if t < 3 else 2}], np.random.default_rng(t))
              for t in range(6)]
    tubes = Tracker(config=TrackerConfig(class_aware=True)).track(frames)
    _check_shapes(tubes, 2, 6)
    assert tubes.valid.tolist() == [[True] * 3 + [False] * 3, [False] * 3 + [True] * 3]
    assert tubes.labels.tolist() == [0, 2]
    # the same frames without the class gate: one tube across the change
    tubes = Tracker(config=TrackerConfig(class_aware=False)).track(frames)
    assert len(tubes) == 1 and tubes.valid.all()
    assert tubes.frame_labels[0].tolist() == [0, 0, 0, 2, 2, 2]


# --- output values ---------------------------------------------------------------------------------

def test_geometry_by_hand_with_and_without_depth():
    e = _embeds(1)[0]
    mask = np.zeros((H, W), bool)
    mask[4:10, 8:16] = True  # rows 4..9, columns 8..15: 6 x 8 = 48 pixels
    frames = [_frame([{"mask": mask, "embed": e}]) for _ in range(3)] + [_frame([])]
    depth = np.full((4, H, W), 9.0, np.float32)
    for t in range(4):
        depth[t][mask] = 1.0 + t
    depth[:, 4, 8] = 0.0  # missing depth inside the box: not averaged in
    depth[:, 5, 8] = np.nan
    expected = [8 / 32, 4 / 32, 16 / 32, 10 / 32, 48 / 1024]
    tracker = Tracker(config=TrackerConfig())

    with_depth = tracker.track(frames, depth=depth)
    _check_shapes(with_depth, 1, 4)
    for t in range(3):
        np.testing.assert_allclose(with_depth.geometry[0, t], expected + [1.0 + t], rtol=1e-6)
    assert not with_depth.geometry[0, 3].any()

    without = tracker.track(frames)
    for t in range(3):
        np.testing.assert_allclose(without.geometry[0, t], expected + [0.0], rtol=1e-6)


def test_depth_shape_mismatch_names_the_shapes():
    frames = [_frame([{"mask": _square(2, 2), "embed": _embeds(1)[0]}]) for _ in range(3)]
    with pytest.raises(ValueError, match=r"\(3, 16, 16\).*\(3, 32, 32\)"):
        Tracker(config=TrackerConfig()).track(frames, depth=np.ones((3, 16, 16), np.float32))
    with pytest.raises(ValueError, match=r"\(2, 32, 32\).*\(3, 32, 32\)"):
        Tracker(config=TrackerConfig()).track(frames, depth=np.ones((2, H, W), np.float32))


def test_labels_scores_and_class_probs_aggregated_by_hand():
    e = _embeds(1)[0]
    probs = [np.array([0.1, 0.7, 0.1, 0.0], np.float32), np.array([0.0, 0.2, 0.6, 0.1], np.float32),
             np.array([0.3, 0.0, 0.5, 0.2], np.float32)]
    labels, scores = [1, 2, 2], [0.9, 0.3, 0.4]
    frames = [_frame([{"mask": _square(10, 10), "embed": e, "label": labels[t], "score": scores[t],
                       "probs": probs[t]}]) for t in range(3)] + [_frame([])]
    tubes = Tracker(config=TrackerConfig(class_aware=False)).track(frames)
    _check_shapes(tubes, 1, 4)
    # votes: class 1 gets 0.9, class 2 gets 0.3 + 0.4 = 0.7 -> class 1 (a plain count would say 2)
    assert tubes.labels.tolist() == [1]
    assert tubes.frame_labels.tolist() == [[1, 2, 2, -1]]
    assert tubes.scores[0] == pytest.approx((0.9 + 0.3 + 0.4) / 3)
    np.testing.assert_allclose(tubes.class_probs[0], [0.4 / 3, 0.9 / 3, 1.2 / 3, 0.3 / 3], rtol=1e-6)


def test_tubes_ordered_by_first_frame_then_score():
    e_lo, e_hi, e_late = _embeds(3)
    frames = []
    for t in range(4):
        objs = [{"mask": _square(2, 2), "embed": e_lo, "score": 0.6},
                {"mask": _square(12, 2), "embed": e_hi, "score": 0.95}]
        if t >= 1:
            objs.append({"mask": _square(22, 22), "embed": e_late, "score": 1.0})
        frames.append(_frame(objs, np.random.default_rng(t)))
    tubes = Tracker(config=TrackerConfig()).track(frames)
    _check_shapes(tubes, 3, 4)
    assert np.array_equal(tubes.masks[0, 0], _square(12, 2))
    assert np.array_equal(tubes.masks[1, 0], _square(2, 2))
    assert np.array_equal(tubes.masks[2, 1], _square(22, 22))
    np.testing.assert_allclose(tubes.scores, [0.95, 0.6, 1.0], rtol=1e-6)


def test_empty_videos():
    tracker = Tracker(config=TrackerConfig())
    # frames without segments: N = 0 with the trailing shapes of the (empty) detections
    tubes = tracker.track([FrameDetections.empty(H, W, C, D) for _ in range(5)])
    _check_shapes(tubes, 0, 5)
    assert len(tubes) == 0 and tubes.num_frames == 5
    # segments that never start a track: the same
    frames = [_frame([{"mask": _square(2, 2), "embed": _embeds(1)[0], "score": 0.1}]) for _ in range(3)]
    _check_shapes(tracker.track(frames, depth=np.ones((3, H, W))), 0, 3)
    # no frames at all
    tubes = tracker.track([])
    assert len(tubes) == 0 and tubes.num_frames == 0
    assert tubes.masks.ndim == 4 and tubes.feats.ndim == 3 and tubes.geometry.shape[-1] == GEOMETRY_DIM
    assert tracker.track([], depth=np.zeros((0, H, W))).masks.shape == (0, 0, H, W)


def test_save_load_round_trip(tmp_path):
    frames, _, _ = _crossing_video()
    depth = np.random.default_rng(0).uniform(0.5, 4.0, size=(6, H, W)).astype(np.float32)
    tubes = Tracker(config=TrackerConfig()).track(frames, depth=depth)
    path = tmp_path / "tubes.npz"
    tubes.save(path)
    back = TrackedTubes.load(path)
    assert len(back) == len(tubes) == 2
    for name in ("masks", "valid", "feats", "geometry", "class_probs", "labels", "frame_labels", "scores"):
        a, b = getattr(tubes, name), getattr(back, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    # an empty result survives the round trip too
    empty = Tracker(config=TrackerConfig()).track([FrameDetections.empty(H, W, C, D)] * 2)
    empty.save(tmp_path / "empty.npz")
    back = TrackedTubes.load(tmp_path / "empty.npz")
    assert back.masks.shape == (0, 2, H, W) and back.feats.shape == (0, 2, D)


def test_inputs_are_not_modified():
    frames, _, _ = _crossing_video()
    before = [(f.masks.copy(), f.embeds.copy()) for f in frames]
    Tracker(config=TrackerConfig()).track(frames)
    for f, (m, e) in zip(frames, before):
        assert np.array_equal(f.masks, m) and np.array_equal(f.embeds, e)
