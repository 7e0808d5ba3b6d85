import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from psg4d.data.schema import (
    MaskTube,
    ObjectTrack,
    Relation,
    SceneGraph4D,
    Video4D,
    iter_scene_graphs,
    load_scene_graphs,
    merge_spans,
    save_scene_graphs,
)
from psg4d.errors import DataError


def _graph(T=5, H=6, W=7, seed=0):
    rng = np.random.default_rng(seed)
    m1 = rng.random((T, H, W)) > 0.6
    m2 = rng.random((T, H, W)) > 0.3
    m2[2] = False  # absent in one frame
    return SceneGraph4D(
        video_id="v0",
        num_frames=T,
        height=H,
        width=W,
        objects=[
            ObjectTrack(object_id=1, category="hand", tube=MaskTube.from_dense(m1)),
            ObjectTrack(
                object_id=7,
                category="mug",
                is_thing=True,
                tube=MaskTube.from_dense(m2),
                frame_categories=["mug", "cup", None, "mug", "cup"],
                score=0.5,
            ),
        ],
        relations=[Relation(1, 7, "picking up", [(0, 1), (3, 4)], score=0.9)],
        object_vocab=["hand", "mug"],
        predicate_vocab=["picking up"],
        meta={"source": "test"},
    )


def test_tube_dense_roundtrip_and_absent_frames():
    g = _graph()
    tube = g.objects[1].tube
    assert tube.rles[2] is None
    dense = tube.to_dense()
    assert dense.shape == (5, 6, 7) and not dense[2].any()
    assert np.array_equal(tube.areas(), dense.reshape(5, -1).sum(1))
    assert np.array_equal(tube.frame(3), dense[3])
    assert list(tube.present()) == [True, True, False, True, True]


def test_json_roundtrip_exact(tmp_path):
    g = _graph()
    d = g.to_json()
    g2 = SceneGraph4D.from_json(json.loads(json.dumps(d)))
    assert g2.to_json() == d
    p = tmp_path / "g.json"
    g.save(p)
    assert SceneGraph4D.load(p).to_json() == d


def test_collection_jsonl_roundtrip(tmp_path):
    gs = [_graph(seed=i) for i in range(3)]
    for i, g in enumerate(gs):
        g.video_id = f"v{i}"
    p = tmp_path / "preds.jsonl"
    assert save_scene_graphs(p, gs) == 3
    back = list(iter_scene_graphs(p))
    assert [g.to_json() for g in back] == [g.to_json() for g in gs]
    assert set(load_scene_graphs(p)) == {"v0", "v1", "v2"}


def test_majority_category_and_ranking():
    g = _graph()
    assert g.objects[1].majority_category() == "mug"  # tie mug/cup -> first seen
    g.relations.append(Relation(7, 1, "next to", [(0, 0)], score=0.95))
    g.relations.append(Relation(7, 1, "behind", [(0, 0)]))
    assert [r.predicate for r in g.ranked()] == ["next to", "picking up", "behind"]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda g: g.relations.append(Relation(1, 99, "on", [(0, 1)])), "object id 99"),
        (lambda g: g.relations.append(Relation(1, 7, "on", [(3, 9)])), "outside the video"),
        (lambda g: setattr(g.objects[0], "tube", MaskTube.empty(5, 3, 3)), "mask size"),
        (lambda g: setattr(g.objects[0], "tube", MaskTube.empty(4, 6, 7)), "4 frames"),
        (lambda g: g.objects.append(ObjectTrack(object_id=1, category="x")), "duplicate object_id"),
        (lambda g: g.relations.append(Relation(1, 7, "on", [(0, 1)], score=float("nan"))), "NaN"),
    ],
)
def test_validation_names_file_and_problem(tmp_path, mutate, message):
    g = _graph()
    mutate(g)
    with pytest.raises(DataError) as e:
        g.validate(tmp_path / "ann.json")
    assert "ann.json" in str(e.value) and message in str(e.value)


def test_load_errors_name_the_file(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(DataError, match="bad.json.*malformed JSON"):
        SceneGraph4D.load(p)
    with pytest.raises(DataError, match="missing.json.*not found"):
        SceneGraph4D.load(tmp_path / "missing.json")
    p.write_text(json.dumps({"video_id": "a", "num_frames": 3}))
    with pytest.raises(DataError, match="missing field 'height'"):
        SceneGraph4D.load(p)
    p2 = tmp_path / "p.jsonl"
    p2.write_text(json.dumps(_graph().to_json()) + "\n{oops\n")
    with pytest.raises(DataError, match="p.jsonl.*line 2"):
        list(iter_scene_graphs(p2))


def test_video_validation():
    rgb = np.zeros((4, 8, 8, 3), np.uint8)
    Video4D(rgb=rgb, depth=np.ones((4, 8, 8), np.float32)).validate()
    with pytest.raises(DataError, match="RGB has 4 frames, depth has 3"):
        Video4D(rgb=rgb, depth=np.ones((3, 8, 8), np.float32), video_id="clip").validate()
    with pytest.raises(DataError, match="no frames"):
        Video4D(rgb=np.zeros((0, 8, 8, 3), np.uint8)).validate()
    v = Video4D(rgb=rgb).slice(1, 3)
    assert v.num_frames == 2 and list(v.frame_indices) == [1, 2]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 10)), max_size=8))
def test_merge_spans_covers_same_frames(raw):
    spans = [(a, a + d) for a, d in raw]
    merged = merge_spans(spans)
    covered = {t for a, b in spans for t in range(a, b + 1)}
    assert {t for a, b in merged for t in range(a, b + 1)} == covered
    for (a1, b1), (a2, b2) in zip(merged, merged[1:]):
        assert b1 + 1 < a2


def test_long_tube_areas_and_dense():
    # pycocotools overflows on >255 RLEs in one call; the tube must chunk
    T = 300
    m = np.zeros((T, 4, 4), bool)
    m[:, 1:3, 1:3] = True
    tube = MaskTube.from_dense(m)
    assert tube.areas().tolist() == [4] * T
    assert np.array_equal(tube.to_dense(), m)


def test_atomic_outputs_are_not_private(tmp_path):
    import stat

    from psg4d.utils.io import atomic_dir, atomic_write_text

    atomic_write_text(tmp_path / "a.txt", "x")
    with atomic_dir(tmp_path / "d") as d:
        (d / "f").write_text("y")
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) & 0o044
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) & 0o055


def test_spans_from_mask():
    from psg4d.data.schema import spans_from_mask

    m = np.array([1, 1, 0, 1, 0, 0, 1, 1, 1], bool)
    assert spans_from_mask(m) == [(0, 1), (3, 3), (6, 8)]
    assert spans_from_mask(m, min_len=2) == [(0, 1), (6, 8)]
    assert spans_from_mask(np.zeros(4, bool)) == []
