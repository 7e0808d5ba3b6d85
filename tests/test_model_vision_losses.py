"""SAM-style mask losses."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from psg4d.data.masks import mask_iou
from psg4d.model.losses import LossConfig, mask_losses, resize_target


def _target():
    t = torch.zeros(2, 3, 32, 32, dtype=torch.bool)
    t[0, :, 4:20, 8:24] = True
    t[1, 0, 10:30, 0:12] = True  # object 1 absent in frames 1-2
    return t


def test_perfect_prediction_is_nearly_free():
    tgt = _target()
    logits = (tgt.float() * 2 - 1) * 30  # confident and right, at full resolution
    iou_pred = torch.ones(2, 3)
    out = mask_losses(logits, iou_pred, tgt)
    assert set(out) == {"focal", "dice", "iou", "total"}
    assert out["focal"] < 1e-6 and out["dice"] < 0.01 and out["iou"] < 1e-9
    wrong = mask_losses(-logits, iou_pred, tgt)
    assert wrong["total"] > 10 * out["total"] + 1


def test_absent_frames_supervised_as_empty():
    tgt = torch.zeros(1, 2, 16, 16, dtype=torch.bool)
    empty = mask_losses(torch.full((1, 2, 16, 16), -20.0), torch.ones(1, 2), tgt)
    assert empty["dice"] < 0.01 and empty["iou"] < 1e-9  # empty vs empty: IoU 1
    spurious = mask_losses(torch.full((1, 2, 16, 16), 5.0), torch.ones(1, 2), tgt)
    assert spurious["dice"] > 0.9 and spurious["focal"] > 1.0 and spurious["iou"] == pytest.approx(1.0)


def test_focal_matches_torchvision():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 32, 32)
    tgt = _target()
    out = mask_losses(logits, torch.zeros(2, 3), tgt, cfg=LossConfig())
    ref = sigmoid_focal_loss(logits, tgt.float(), alpha=0.25, gamma=2.0, reduction="mean")
    torch.testing.assert_close(out["focal"], ref)


def test_target_resized_to_logits_by_area():
    tgt = _target()
    small = resize_target(tgt, (8, 8))
    assert small.shape == (2, 3, 8, 8)
    torch.testing.assert_close(small.mean(dim=(-1, -2)), tgt.float().mean(dim=(-1, -2)))
    assert ((small > 0) & (small < 1)).any()  # boundary cells get fractional labels
    out = mask_losses(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3), tgt)
    assert torch.isfinite(out["total"])


def test_iou_target_and_weights():
    tgt = _target()[:1, :1]  # 16x16 box in 32x32
    logits = torch.full((1, 1, 32, 32), -10.0)
    logits[..., 4:20, 8:16] = 10.0  # half the box
    assert mask_iou(logits > 0, tgt).item() == pytest.approx(0.5)
    out = mask_losses(logits, torch.tensor([[0.5]]), tgt)
    assert out["iou"].item() == pytest.approx(0.0, abs=1e-9)
    cfg = LossConfig(focal_weight=0.0, dice_weight=0.0, iou_weight=2.0)
    out = mask_losses(logits, torch.tensor([[0.0]]), tgt, cfg=cfg)
    torch.testing.assert_close(out["total"], torch.tensor(0.5))


def test_iou_target_of_an_absent_frame_predicted_empty_is_one():
    """The IoU head's target takes empty/empty = 1 (``empty=1.0``): nothing predicted where the
    object is absent is a perfect mask; a non-empty prediction there scores 0."""
    tgt = torch.zeros(1, 2, 16, 16, dtype=torch.bool)  # absent in both frames
    logits = torch.full((1, 2, 16, 16), -10.0)
    logits[0, 1, :4, :4] = 10.0  # frame 1 predicts a blob that is not there
    cfg = LossConfig(focal_weight=0.0, dice_weight=0.0, iou_weight=1.0)
    out = mask_losses(logits, torch.tensor([[1.0, 0.0]]), tgt, cfg=cfg)
    assert out["iou"].item() == pytest.approx(0.0, abs=1e-9)
    out = mask_losses(logits, torch.tensor([[0.0, 1.0]]), tgt, cfg=cfg)
    assert out["iou"].item() == pytest.approx(1.0)  # mean of (0 - 1)^2 and (1 - 0)^2


def test_gradients_and_errors():
    logits = torch.zeros(2, 3, 8, 8, requires_grad=True)
    iou_pred = torch.full((2, 3), 0.5, requires_grad=True)
    mask_losses(logits, iou_pred, _target())["total"].backward()
    assert logits.grad.abs().sum() > 0 and iou_pred.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="shape"):
        mask_losses(torch.zeros(2, 4, 8, 8), torch.zeros(2, 4), _target())
    none = mask_losses(torch.zeros(0, 3, 8, 8, requires_grad=True), torch.zeros(0, 3), torch.zeros(0, 3, 32, 32, dtype=torch.bool))
    assert none["total"].item() == 0.0 and none["total"].requires_grad


def test_presence_term_from_object_logits():
    tgt = _target()  # object 1 absent in frames 1-2
    logits = torch.zeros(2, 3, 32, 32)
    right = torch.tensor([[9.0, 9.0, 9.0], [9.0, -9.0, -9.0]])
    a = mask_losses(logits, torch.zeros(2, 3), tgt, object_logits=right)
    b = mask_losses(logits, torch.zeros(2, 3), tgt, object_logits=-right)
    assert a["presence"] < 1e-3 < 5 < b["presence"]
    torch.testing.assert_close(b["total"] - a["total"], b["presence"] - a["presence"])
    assert "presence" not in mask_losses(logits, torch.zeros(2, 3), tgt)
