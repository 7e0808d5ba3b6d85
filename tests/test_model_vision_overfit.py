"""The tiny encoder + mask decoder can overfit one synthetic RGB-D clip."""

from __future__ import annotations

import pytest
import torch

from psg4d.model.encoder import EncoderConfig, build_encoder
from psg4d.data.masks import mask_iou
from psg4d.model.losses import mask_losses, resize_target
from psg4d.model.mask_decoder import MaskDecoderConfig, build_mask_decoder


def _clip(t: int = 4):
    """Noise background, a red box moving right and a blue box moving up that leaves in the last frame."""
    g = torch.Generator().manual_seed(1)
    rgb = torch.rand(1, t, 3, 64, 64, generator=g) * 0.3
    depth = torch.full((1, t, 1, 64, 64), 3.0)
    target = torch.zeros(2, t, 64, 64, dtype=torch.bool)
    for i in range(t):
        x = 4 + 10 * i
        rgb[0, i, :, 8:28, x : x + 16] = torch.tensor([0.9, 0.3, 0.1])[:, None, None]
        depth[0, i, :, 8:28, x : x + 16] = 1.0
        target[0, i, 8:28, x : x + 16] = True
        if i < t - 1:
            y = 40 - 4 * i
            rgb[0, i, :, y : y + 14, 30:50] = torch.tensor([0.1, 0.4, 0.9])[:, None, None]
            depth[0, i, :, y : y + 14, 30:50] = 2.0
            target[1, i, y : y + 14, 30:50] = True
    return rgb, depth, target


@pytest.fixture
def one_thread():
    # Tiny ops are dominated by threading overhead; on a shared 2-core box one thread is ~10x faster.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_tiny_model_overfits_two_moving_boxes(one_thread):
    torch.manual_seed(0)
    enc = build_encoder(EncoderConfig())
    dec = build_mask_decoder(MaskDecoderConfig())
    rgb, depth, target = _clip()
    prompts = torch.nn.Parameter(torch.randn(2, 64) * 0.1)  # stand-ins for the projected [Obj] states
    opt = torch.optim.AdamW([*enc.parameters(), *dec.parameters(), prompts], lr=2e-3)
    first_loss = None
    for step in range(250):
        logits, iou_pred = dec(enc(rgb, depth).dense[0], prompts)
        losses = mask_losses(logits, iou_pred, target)
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
        first_loss = first_loss if first_loss is not None else losses["total"].item()
        with torch.no_grad():
            # an absent frame predicted empty is right: empty/empty = 1, as the IoU head's target
            iou = mask_iou(logits > 0, resize_target(target, tuple(logits.shape[-2:])) > 0.5, empty=1.0)  # [2, T]
        if iou.min() > 0.8:
            break
    assert iou.min() > 0.8, (step, iou)
    # each prompt found its own object, and the blue box's absent frame is empty
    assert losses["total"].item() < first_loss / 3
    assert not (logits[1, -1] > 0).any()
