"""The one mask IoU (psg4d.data.masks): iou_from_counts, mask_iou, pairwise_mask_iou, by hand,
numpy and torch, with the empty-mask convention (0 by default, ``empty=1.0`` on request)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from psg4d.data.masks import dense_tube_viou, iou_from_counts, mask_iou, pairwise_mask_iou


def _masks() -> np.ndarray:
    """Four 3x4 masks: ``m[0]`` 4 px (row 0), ``m[1]`` 2 px (row 0, cols 2-3; inside ``m[0]``),
    ``m[2]`` 3 px (row 0 col 3, row 1 cols 2-3), ``m[3]`` empty.

    By hand: IoU(0, 1) = 2/4; IoU(0, 2) = 1/6; IoU(1, 2) = 1/4; IoU(x, 3) = 0 for non-empty x;
    IoU(3, 3) = empty (0 or 1 by convention)."""
    m = np.zeros((4, 3, 4), bool)
    m[0, 0, :] = True
    m[1, 0, 2:] = True
    m[2, 0, 3] = True
    m[2, 1, 2:] = True
    return m


EXPECTED = np.array([
    [1.0, 2 / 4, 1 / 6, 0.0],
    [2 / 4, 1.0, 1 / 4, 0.0],
    [1 / 6, 1 / 4, 1.0, 0.0],
    [0.0, 0.0, 0.0, np.nan],  # both empty: the convention
])


def _expected(empty: float) -> np.ndarray:
    return np.where(np.isnan(EXPECTED), empty, EXPECTED)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("empty", [None, 0.0, 1.0])
def test_mask_iou_by_hand(lib, empty):
    m = _masks()
    a, b = m[:, None], m[None, :]  # broadcast to every pair: [4, 1, 3, 4] x [1, 4, 3, 4] -> [4, 4]
    if lib == "torch":
        a, b = torch.from_numpy(a), torch.from_numpy(b)
    kw = {} if empty is None else {"empty": empty}
    got = mask_iou(a, b, **kw)
    want = _expected(0.0 if empty is None else empty)
    if lib == "torch":
        assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
        got = got.numpy()
    else:
        assert isinstance(got, np.ndarray) and got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_both_empty_and_one_empty():
    z = np.zeros((2, 2), bool)
    one = np.eye(2, dtype=bool)
    assert float(mask_iou(z, z)) == 0.0  # default: the metric convention
    assert float(mask_iou(z, z, empty=1.0)) == 1.0
    for empty in (0.0, 1.0):  # one empty mask shares nothing with a non-empty one, either way
        assert float(mask_iou(z, one, empty=empty)) == 0.0
        assert float(mask_iou(one, z, empty=empty)) == 0.0
    tz, tone = torch.zeros(2, 2, dtype=torch.bool), torch.eye(2, dtype=torch.bool)
    assert mask_iou(tz, tz).item() == 0.0 and mask_iou(tz, tz, empty=1.0).item() == 1.0
    assert mask_iou(tz, tone, empty=1.0).item() == 0.0


def test_dims_volume_and_temporal_iou():
    m = _masks()
    # a 2-frame tube: frame 0 = m0 vs m1 (inter 2, union 4), frame 1 = m2 vs m3 (inter 0, union 3)
    a, b = m[[0, 2]], m[[1, 3]]
    assert float(mask_iou(a, b, dims=3)) == pytest.approx(2 / 7)  # volume IoU: summed, then divided
    assert float(mask_iou(a, b, dims=3)) == pytest.approx(dense_tube_viou(a, b))
    np.testing.assert_allclose(mask_iou(a, b), [2 / 4, 0.0])  # dims=2: per frame
    # dims=1 on frame-membership masks [T]: frames {0, 1, 2} vs {2, 3} -> 1 / 4
    f1 = np.array([1, 1, 1, 0, 0], bool)
    f2 = np.array([0, 0, 1, 1, 0], bool)
    assert float(mask_iou(f1, f2, dims=1)) == pytest.approx(1 / 4)
    # non-bool masks: non-zero is inside
    assert float(mask_iou(a.astype(np.uint8) * 255, b.astype(np.float32), dims=3)) == pytest.approx(2 / 7)
    with pytest.raises(ValueError):
        mask_iou(a, b, dims=0)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("empty", [0.0, 1.0])
def test_pairwise_by_hand(lib, empty):
    m = _masks()
    a, b = (m, m[[1, 3, 0]]) if lib == "numpy" else (torch.from_numpy(m), torch.from_numpy(m[[1, 3, 0]]))
    got = pairwise_mask_iou(a, b, empty=empty)  # [4, 3]
    if lib == "torch":
        assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
        got = got.numpy()
    else:
        assert got.dtype == np.float32
    assert got.shape == (4, 3)
    np.testing.assert_allclose(got, _expected(empty)[:, [1, 3, 0]], rtol=1e-6)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_pairwise_per_frame_and_volume(lib):
    m = _masks()
    pred = np.stack([m[[0, 2]], m[[3, 3]]])  # [2, T=2, 3, 4]: second tube empty
    gold = np.stack([m[[1, 3]], m[[0, 2]], m[[3, 3]]])  # [3, 2, 3, 4]: third tube empty
    conv = (lambda x: x) if lib == "numpy" else torch.from_numpy
    per_frame = pairwise_mask_iou(conv(pred), conv(gold))  # [2, 3, T]
    vol = pairwise_mask_iou(conv(pred), conv(gold), dims=3)  # [2, 3]
    flat = pairwise_mask_iou(conv(pred.reshape(2, 2, -1)), conv(gold.reshape(3, 2, -1)), dims=1)  # [2, 3, T]
    per_frame, vol, flat = (np.asarray(x) for x in (per_frame, vol, flat))
    assert per_frame.shape == flat.shape == (2, 3, 2) and vol.shape == (2, 3)
    np.testing.assert_allclose(per_frame, flat)
    np.testing.assert_allclose(per_frame[0, 0], [2 / 4, 0.0])
    np.testing.assert_allclose(per_frame[0, 1], [1.0, 1.0])
    np.testing.assert_allclose(per_frame[1], 0.0)  # empty pred: 0 against anything, empty gold included
    np.testing.assert_allclose(vol[0], [2 / 7, 1.0, 0.0])
    np.testing.assert_allclose(vol[1], 0.0)
    # it agrees with mask_iou broadcast over every pair
    np.testing.assert_allclose(per_frame, mask_iou(pred[:, None], gold[None, :]), rtol=1e-6)
    np.testing.assert_allclose(vol, mask_iou(pred[:, None], gold[None, :], dims=3), rtol=1e-6)


def test_pairwise_empty_sets_and_bad_shapes():
    m = _masks()
    assert pairwise_mask_iou(m[:0], m).shape == (0, 4)
    assert pairwise_mask_iou(np.zeros((2, 5, 9), bool), np.zeros((0, 5, 9), bool), dims=1).shape == (2, 0, 5)
    assert pairwise_mask_iou(torch.from_numpy(m), torch.from_numpy(m[:0])).shape == (4, 0)
    with pytest.raises(ValueError):
        pairwise_mask_iou(m, m[:, :2])  # pixel shapes differ
    with pytest.raises(ValueError):
        pairwise_mask_iou(m[0], m[1], dims=2)  # no set dimension


def test_iou_from_counts():
    np.testing.assert_allclose(iou_from_counts(np.array([1, 0, 2]), np.array([4, 0, 2])), [0.25, 0.0, 1.0])
    np.testing.assert_allclose(iou_from_counts(np.array([1, 0]), np.array([4, 0]), empty=1.0), [0.25, 1.0])
    # weighted counts below 1 are divided, not clamped
    assert float(iou_from_counts(0.15, 0.3)) == pytest.approx(0.5)
    got = iou_from_counts(torch.tensor([1.0, 0.0]), torch.tensor([2.0, 0.0]), empty=1.0)
    assert isinstance(got, torch.Tensor) and got.tolist() == [0.5, 1.0]
    # float32 counts keep float32
    assert iou_from_counts(np.float32([1]), np.float32([3])).dtype == np.float32
