"""RLE helpers and the two tube vIoU functions (dense and RLE), checked by hand and against each other."""

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from psg4d.data import schema
from psg4d.data.masks import (
    coco_rle,
    dense_tube_viou,
    rle_area,
    rle_areas,
    rle_decode,
    rle_encode,
    rle_encode_batch,
    rle_tube_viou,
)


def _tube() -> tuple[np.ndarray, np.ndarray]:
    """Two 2x3x3 tubes. Frame 0: 2 px each, 1 shared (inter 1, union 3).
    Frame 1: only ``a`` has a pixel (inter 0, union 1)."""
    a = np.zeros((2, 3, 3), bool)
    b = np.zeros((2, 3, 3), bool)
    a[0, 0, 0:2] = True
    b[0, 0, 1:3] = True
    a[1, 2, 2] = True
    return a, b


def _rles(tube: np.ndarray) -> list[dict | None]:
    return [rle_encode(m) if m.any() else None for m in tube]


def test_dense_viou_by_hand():
    a, b = _tube()
    assert dense_tube_viou(a, b) == pytest.approx(1 / 4)
    assert dense_tube_viou(a, a) == 1.0
    # frame 0 counted three times: (3*1 + 0) / (3*3 + 1)
    assert dense_tube_viou(a, b, weights=[3, 1]) == pytest.approx(3 / 10)
    # only frame 1 counts: no overlap there
    assert dense_tube_viou(a, b, weights=[0, 1]) == 0.0


def test_box_against_shifted_box():
    box = np.zeros((2, 4, 4), bool)
    box[:, 0:2, 0:2] = True
    shifted = np.zeros((2, 4, 4), bool)
    shifted[:, 0:2, 0:2] = True
    shifted[0] = False
    shifted[0, 0:2, 1:3] = True
    # frame 0: inter 2, union 6; frame 1: inter 4, union 4 -> 6 / 10
    assert dense_tube_viou(box, shifted) == pytest.approx(0.6)
    assert rle_tube_viou(_rles(box), _rles(shifted)) == pytest.approx(0.6)


@pytest.mark.parametrize("empty", [0.0, 1.0])
def test_empty_tubes_score_the_empty_convention(empty):
    """Two empty tubes: 0 by default (the metric convention), 1.0 with ``empty=1.0`` (they agree exactly)."""
    z = np.zeros((3, 4, 5), bool)
    kw = {} if empty == 0.0 else {"empty": empty}
    assert dense_tube_viou(z, z, **kw) == empty
    assert dense_tube_viou(z, z, weights=[1, 2, 3], **kw) == empty
    assert rle_tube_viou([None] * 3, [None] * 3, **kw) == empty
    # a present but empty mask is the same as an absent one
    e = rle_encode(np.zeros((4, 5), bool))
    assert rle_tube_viou([e, None, e], [None, e, None], **kw) == empty
    assert rle_tube_viou([], [], **kw) == empty
    # one empty tube against a non-empty one shares nothing, whatever the convention
    a, _ = _tube()
    assert dense_tube_viou(a, np.zeros_like(a), **kw) == 0.0
    assert rle_tube_viou(_rles(a), [None, None], **kw) == 0.0
    # weights that zero every frame with a pixel leave an empty union
    assert dense_tube_viou(a, a, weights=[0, 0], **kw) == empty


def test_rle_viou_by_hand_with_absent_frames():
    a, b = _tube()
    ra, rb = _rles(a), _rles(b)
    assert rb[1] is None  # absent frame
    assert rle_tube_viou(ra, rb) == pytest.approx(1 / 4)
    assert rle_tube_viou(ra, rb, weights=[3, 1]) == pytest.approx(3 / 10)
    assert rle_tube_viou(ra, rb, weights=np.array([0.0, 1.0])) == 0.0
    assert rle_tube_viou(ra, ra) == 1.0


def test_rle_viou_accepts_uncompressed_counts():
    a, b = _tube()
    # COCO's uncompressed form: column-major run lengths starting with zeros
    flat = a[0].flatten(order="F").astype(np.int64)
    runs, cur, n = [], 0, 0
    for v in flat:
        if v != cur:
            runs.append(n)
            cur, n = v, 0
        n += 1
    runs.append(n)
    uncompressed = {"size": [3, 3], "counts": runs}
    assert np.array_equal(rle_decode(uncompressed), a[0])
    assert rle_tube_viou([uncompressed, rle_encode(a[1])], _rles(b)) == pytest.approx(1 / 4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rle_and_dense_agree_on_random_tubes(seed):
    rng = np.random.default_rng(seed)
    T, H, W = 9, 13, 11
    a = rng.random((T, H, W)) < 0.3
    b = rng.random((T, H, W)) < 0.3
    a[2] = False  # an absent frame in a
    b[5] = False  # and one in b
    a[7] = b[7] = False  # a frame absent in both
    weights = rng.integers(0, 4, size=T)
    for w in (None, weights, weights.astype(np.float64) / 3):
        assert rle_tube_viou(_rles(a), _rles(b), weights=w) == pytest.approx(dense_tube_viou(a, b, weights=w))
    # a frame counted twice is the same as the frame repeated
    twice = np.ones(T, dtype=np.int64)
    twice[0] = 2
    assert dense_tube_viou(a, b, weights=twice) == pytest.approx(dense_tube_viou(np.r_[a[:1], a], np.r_[b[:1], b]))


def test_viou_refuses_mismatched_tubes():
    a, b = _tube()
    with pytest.raises(ValueError, match="same number of frames"):
        rle_tube_viou(_rles(a), _rles(b)[:1])
    with pytest.raises(ValueError, match=r"\[T, H, W\]"):
        dense_tube_viou(a, b[:1])
    with pytest.raises(ValueError, match="weights"):
        dense_tube_viou(a, b, weights=[1, 1, 1])
    with pytest.raises(ValueError, match="non-negative"):
        rle_tube_viou(_rles(a), _rles(b), weights=[1, -1])
    with pytest.raises(ValueError, match="sizes"):
        rle_tube_viou([rle_encode(np.ones((2, 2), bool))], [rle_encode(np.ones((3, 3), bool))])


def test_rle_round_trip_areas_and_coco_form():
    rng = np.random.default_rng(3)
    masks = rng.random((300, 6, 5)) < 0.5
    rles = rle_encode_batch(masks)
    assert all(isinstance(r["counts"], str) for r in rles)  # JSON-safe
    assert rle_encode_batch(np.zeros((0, 6, 5), bool)) == []
    assert np.array_equal(rle_decode(rles[17]), masks[17])
    assert rle_area(rles[17]) == int(masks[17].sum())
    # more than 255 at once: pycocotools' own area() overflows there
    assert np.array_equal(rle_areas([coco_rle(r) for r in rles]), masks.reshape(300, -1).sum(1))
    c = coco_rle(rles[0])
    assert isinstance(c["counts"], bytes) and c["size"] == [6, 5]
    assert mask_utils.area(c) == masks[0].sum()


def test_schema_reexports_the_rle_helpers():
    assert schema.rle_encode is rle_encode
    assert schema.rle_decode is rle_decode
    assert schema.rle_area is rle_area
    assert schema.rle_encode_batch is rle_encode_batch
