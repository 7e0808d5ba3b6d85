"""The pipeline baseline's segmenter: Hungarian matching, the Mask2Former losses, panoptic
inference on hand-set logits, and a tiny segmenter overfitting a few synthetic HOI frames."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from psg4d.baseline.config import SegmenterConfig
from psg4d.baseline.matching import hungarian, match_queries, segment_cost
from psg4d.baseline.seg_loss import SegmentationLoss
from psg4d.baseline.segmenter import QuerySegmenter, frame_targets, inverse_depth
from psg4d.data.readers import open_dataset
from psg4d.data.schema import Video4D
from psg4d.data.synth.generate import SynthConfig, generate

WEIGHTS = {"class_weight": 2.0, "mask_weight": 5.0, "dice_weight": 5.0}


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny ops are dominated by threading overhead; on a shared 2-core box one thread is far faster.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny_config(**kw) -> SegmenterConfig:
    base = {"class_names": ["cup", "ball", "floor"], "stuff_names": ["floor"], "image_size": 16,
            "widths": (8, 16, 16), "hidden": 16, "num_queries": 10, "decoder_layers": 3, "heads": 2, "ffn": 32}
    return SegmenterConfig(**(base | kw))


# ------------------------------------------------------------------------ Hungarian

def _brute_force(cost: np.ndarray) -> float:
    """The optimal total cost over every one-to-one assignment of min(Q, G) pairs."""
    q, g = cost.shape
    if q <= g:
        return min(sum(cost[i, c] for i, c in enumerate(cols)) for cols in itertools.permutations(range(g), q))
    return min(sum(cost[r, j] for j, r in enumerate(rows)) for rows in itertools.permutations(range(q), g))


@pytest.mark.parametrize("shape", [(4, 4), (3, 5), (5, 3), (1, 4), (4, 1), (6, 6)])
def test_hungarian_finds_the_brute_force_optimum(shape):
    rng = np.random.default_rng(sum(shape))
    for _ in range(5):
        cost = rng.normal(size=shape)
        rows, cols = hungarian(cost)
        assert rows.dtype == np.int64 and cols.dtype == np.int64
        assert len(rows) == len(cols) == min(shape)
        assert len(set(rows)) == len(rows) and len(set(cols)) == len(cols)
        assert math.isclose(cost[rows, cols].sum(), _brute_force(cost), abs_tol=1e-9)


def test_hungarian_hand_case_and_empty():
    cost = np.array([[9.0, 1.0, 9.0], [1.0, 9.0, 9.0], [9.0, 9.0, 1.0]])
    rows, cols = hungarian(cost)
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 1, 1: 0, 2: 2}
    for shape in [(0, 3), (3, 0), (0, 0)]:
        rows, cols = hungarian(np.zeros(shape))
        assert rows.shape == cols.shape == (0,)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_hungarian_rejects_non_finite(bad):
    cost = np.ones((3, 3))
    cost[1, 2] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        hungarian(cost)
    with pytest.raises(ValueError):
        hungarian(np.ones(3))


# ------------------------------------------------------------------------ matching cost

def _square(size: int, y: int, x: int, side: int) -> torch.Tensor:
    m = torch.zeros(size, size, dtype=torch.bool)
    m[y:y + side, x:x + side] = True
    return m


def test_segment_cost_hand_case():
    s = 12
    gt_masks = torch.stack([_square(s, 1, 1, 4), _square(s, 6, 6, 5)])  # [2, S, S]
    gt_labels = torch.tensor([0, 1])
    # query 0 draws gold 1 and says class 1; query 2 draws gold 0 and says class 0; query 1 is junk
    mask_logits = torch.full((3, s, s), -6.0)
    mask_logits[0][gt_masks[1]] = 6.0
    mask_logits[1][5:8, 0:3] = 6.0
    mask_logits[2][gt_masks[0]] = 6.0
    class_logits = torch.tensor([[0.0, 4.0, 0.0], [0.0, 0.0, 4.0], [4.0, 0.0, 0.0]])
    cost = segment_cost(class_logits, mask_logits, gt_labels, gt_masks, **WEIGHTS)
    assert cost.shape == (3, 2) and not cost.requires_grad
    q, g = match_queries(class_logits, mask_logits, gt_labels, gt_masks, **WEIGHTS)
    assert q.dtype == g.dtype == torch.long
    assert dict(zip(q.tolist(), g.tolist())) == {0: 1, 2: 0}

    # each term against a direct per-pair computation
    prob = class_logits.softmax(-1)
    for i, j in itertools.product(range(3), range(2)):
        x, y = mask_logits[i], gt_masks[j].float()
        bce = F.binary_cross_entropy_with_logits(x, y)
        p = x.sigmoid()
        dice = 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)
        want = -2.0 * prob[i, gt_labels[j]] + 5.0 * bce + 5.0 * dice
        assert torch.isclose(cost[i, j], want, atol=1e-4), (i, j)
    # no gold segment: an empty [Q, 0] cost and an empty match
    empty = segment_cost(class_logits, mask_logits, gt_labels[:0], gt_masks[:0], **WEIGHTS)
    assert empty.shape == (3, 0)
    q, g = match_queries(class_logits, mask_logits, gt_labels[:0], gt_masks[:0], **WEIGHTS)
    assert q.numel() == g.numel() == 0


# ------------------------------------------------------------------------ loss

def _random_outputs(b: int, q: int, c: int, s: int, aux: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)

    def layer() -> dict:
        return {"class_logits": torch.randn(b, q, c + 1, generator=g).requires_grad_(),
                "mask_logits": torch.randn(b, q, s, s, generator=g).requires_grad_()}
    return {**layer(), "aux": [layer() for _ in range(aux)]}


def test_loss_keys_finite_and_deep_supervision():
    cfg = _tiny_config()
    crit = SegmentationLoss(config=cfg)
    out = _random_outputs(2, 10, 3, 16, aux=3)
    targets = [{"labels": torch.tensor([0, 2]), "masks": torch.stack([_square(16, 1, 1, 4), _square(16, 8, 0, 8)])},
               {"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 16, 16, dtype=torch.bool)}]
    losses = crit(out, targets)
    assert set(losses) == {"loss", "loss_class", "loss_mask", "loss_dice"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    total = (cfg.class_weight * losses["loss_class"] + cfg.mask_weight * losses["loss_mask"]
             + cfg.dice_weight * losses["loss_dice"])
    assert torch.isclose(losses["loss"], total)
    losses["loss"].backward()
    assert all(layer["mask_logits"].grad is not None for layer in (out, *out["aux"]))
    # every layer counts: the total is the sum of each layer scored on its own
    single = [crit({k: v for k, v in layer.items() if k != "aux"}, targets)["loss"]
              for layer in (out, *out["aux"])]
    assert torch.isclose(losses["loss"], torch.stack(single).sum(), rtol=1e-5)


def test_loss_class_term_weights_no_object():
    cfg = _tiny_config(no_object_weight=0.1)
    crit = SegmentationLoss(config=cfg)
    out = _random_outputs(1, 4, 3, 16, aux=0, seed=3)
    gt = _square(16, 2, 2, 5)
    out["mask_logits"].data[0, 1] = torch.where(gt, 8.0, -8.0)  # query 1 is the obvious match
    out["class_logits"].data[0, 1] = torch.tensor([0.0, 6.0, 0.0, 0.0])
    losses = crit(out, [{"labels": torch.tensor([1]), "masks": gt[None]}])
    target = torch.tensor([3, 1, 3, 3])
    ce = F.cross_entropy(out["class_logits"][0].detach(), target, reduction="none")
    w = torch.tensor([0.1, 1.0, 0.1, 0.1])
    assert torch.isclose(losses["loss_class"], (w * ce).sum() / w.sum(), atol=1e-5)


def test_frame_without_targets_pushes_queries_to_no_object():
    cfg = _tiny_config()
    crit = SegmentationLoss(config=cfg)
    out = _random_outputs(2, 6, 3, 8, aux=1, seed=5)
    params = [out["class_logits"], out["mask_logits"], *(t for a in out["aux"] for t in a.values())]
    empty = [{"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 8, 8, dtype=torch.bool)}] * 2
    losses = crit(out, empty)
    assert losses["loss_mask"].item() == 0.0 and losses["loss_dice"].item() == 0.0
    assert (out["class_logits"].argmax(-1) != 3).any()
    opt = torch.optim.SGD(params, lr=5.0)
    for _ in range(20):
        opt.zero_grad()
        crit(out, empty)["loss"].backward()
        opt.step()
    for layer in (out, *out["aux"]):
        assert (layer["class_logits"].argmax(-1) == 3).all()
    assert crit(out, empty)["loss"].item() < 0.5 * losses["loss"].item()


# ------------------------------------------------------------------------ inference

def _hand_outputs(s: int = 16) -> dict:
    """Ten queries with hand-set class and mask logits (classes cup, ball, floor + no object)."""
    q = 10
    cls = torch.tensor([[0.0, 0.0, 0.0, 6.0]]).repeat(q, 1)  # no object
    masks = torch.full((q, s, s), -8.0)

    def put(i: int, logits: list[float], region: torch.Tensor | None = None, value: float = 8.0) -> None:
        cls[i] = torch.tensor(logits)
        if region is not None:
            masks[i][region] = value
    put(0, [5.0, 0, 0, 0], _square(s, 2, 2, 4))  # cup 0.98
    put(1, [0, 4.0, 0, 0], _square(s, 4, 4, 6))  # ball 0.948, loses a 2x2 corner to the cup: kept
    put(2, [0.5, 0, 0, 0], _square(s, 2, 10, 4))  # cup 0.35: under score_threshold
    floor_l, floor_r = torch.zeros(s, s, dtype=torch.bool), torch.zeros(s, s, dtype=torch.bool)
    floor_l[12:, :8], floor_r[12:, 8:] = True, True
    put(3, [0, 0, 4.5, 0], floor_l)  # floor 0.968
    put(4, [0, 0, 3.5, 0], floor_r)  # floor 0.918: merged with query 3
    put(5, [0, 3.0, 0, 0], _square(s, 2, 2, 4) | _square(s, 0, 0, 1))  # under the cup: overlap 1/17
    put(6, [6.0, 0, 0, 0], _square(s, 0, 15, 1))  # one pixel: under min_area
    put(7, [0, 5.0, 0, 0], torch.ones(s, s, dtype=torch.bool), value=-0.4)  # prob 0.4 everywhere
    embeds = torch.arange(q, dtype=torch.float32)[:, None].repeat(1, 5)  # [Q, 5]: row i is all i
    return {"class_logits": cls[None], "mask_logits": masks[None], "embeds": embeds[None]}


def test_detect_on_hand_set_logits():
    cfg = _tiny_config(score_threshold=0.5, mask_threshold=0.5, overlap_threshold=0.8, min_area=4)
    model = QuerySegmenter(config=cfg)
    out = _hand_outputs()
    for size in (None, (32, 32)):
        (det,) = model.detect(out, out_size=size)
        h = 16 if size is None else 32
        assert det.masks.shape == (3, h, h) and det.masks.dtype == bool
        assert det.labels.tolist() == [0, 2, 1]  # cup, the merged floor, ball
        assert np.all(np.diff(det.scores) <= 0) and np.all(det.scores > cfg.score_threshold)
        assert det.embeds.dtype == np.float32 and det.embeds[:, 0].tolist() == [0.0, 3.0, 1.0]
        assert det.class_probs.shape == (3, 3) and np.allclose(det.class_probs.max(1), det.scores)
        assert det.masks.sum(0).max() == 1  # non-overlapping
        k = h // 16
        # the cup's square, both floor halves, the ball minus the cup's corner (exact at the model's
        # size; bilinear upsampling may move a pixel or two where the cup and the ball meet)
        areas = det.masks.reshape(3, -1).sum(1) / (k * k)
        assert np.allclose(areas, [16, 64, 32], atol=0 if k == 1 else 0.5), areas
        assert not det.masks[:, 0, 15 * k].any()  # the one-pixel query left nothing
    # a query kept only under a looser overlap rule
    (det,) = QuerySegmenter(config=_tiny_config(overlap_threshold=0.0, min_area=1)).detect(out)
    assert 1 in det.labels.tolist()[3:]
    # nothing above the score threshold: an empty, well-shaped result
    (det,) = QuerySegmenter(config=_tiny_config(score_threshold=0.999)).detect(out)
    assert len(det) == 0 and det.masks.shape == (0, 16, 16) and det.embeds.shape == (0, 5)


# ------------------------------------------------------------------------ model

def test_forward_shapes_with_and_without_depth():
    torch.manual_seed(0)
    cfg = _tiny_config()
    rgb, depth = torch.rand(2, 3, 16, 16), torch.rand(2, 1, 16, 16) + 0.5
    model = QuerySegmenter(config=cfg)
    out = model(rgb, depth)
    assert out["class_logits"].shape == (2, 10, 4)
    assert out["mask_logits"].shape == (2, 10, 16, 16)
    assert out["embeds"].shape == (2, 10, 16)
    assert len(out["aux"]) == cfg.decoder_layers
    assert all(a["mask_logits"].shape == (2, 10, 16, 16) for a in out["aux"])
    # unknown depth reads as zeros, and invalid depth readings too
    a = model(rgb, None)["mask_logits"]
    bad = torch.full_like(depth, float("nan"))
    bad[0, 0, :4] = -1.0
    assert torch.allclose(a, model(rgb, bad)["mask_logits"])
    assert torch.equal(inverse_depth(torch.tensor([2.0, 0.0, -1.0, float("inf"), 1e-9])),
                       torch.tensor([0.5, 0.0, 0.0, 0.0, 20.0]))

    rgb_only = QuerySegmenter(config=_tiny_config(use_depth=False))
    assert not any("depth" in k or "fusion" in k for k in rgb_only.state_dict())
    assert sum(p.numel() for p in rgb_only.parameters()) < sum(p.numel() for p in model.parameters())
    out = rgb_only(rgb)
    assert out["mask_logits"].shape == (2, 10, 16, 16)
    out["mask_logits"].sum().backward()
    assert len(rgb_only.detect(rgb_only(rgb, depth))) == 2


def test_preprocess_resizes_and_frame_targets(tmp_path):
    generate(SynthConfig(preset="hoi", videos=1, images=0, frames=2, size=32, seed=1, workers=1), tmp_path,
             progress=False)
    reader = open_dataset(tmp_path / "4d")
    (vid,) = reader.video_ids()
    video, graph = reader.read_video(vid), reader.read_graph(vid)
    model = QuerySegmenter(config=_tiny_config())
    rgb, depth = model.preprocess(video, [1])
    assert rgb.shape == (1, 3, 16, 16) and 0.0 <= rgb.min() and rgb.max() <= 1.0
    assert depth.shape == (1, 1, 16, 16) and torch.isfinite(depth).all()
    rgb_only = Video4D(rgb=video.rgb, depth=None)
    rgb2, depth2 = model.preprocess(rgb_only)
    assert rgb2.shape == (2, 3, 16, 16) and depth2 is None and torch.equal(rgb2[1], rgb[0])

    index = {c: i for i, c in enumerate(reader.object_vocab)}
    full = frame_targets(graph, 0, index, 32)
    present = [o for o in graph.objects if o.tube.present()[0]]
    assert full["labels"].tolist() == [index[o.category] for o in present]
    assert full["masks"].shape == (len(present), 32, 32) and full["masks"].dtype == torch.bool
    assert torch.equal(full["masks"][0], torch.from_numpy(present[0].tube.frame(0)))
    small = frame_targets(graph, 0, index, 8)
    assert small["masks"].shape[1:] == (8, 8) and small["masks"].flatten(1).any(1).all()
    assert len(small["labels"]) <= len(full["labels"])
    only_table = frame_targets(graph, 0, {"table": 0}, 16)
    assert only_table["labels"].tolist() == [0]
    none = frame_targets(graph, 0, {}, 16)
    assert none["labels"].shape == (0,) and none["masks"].shape == (0, 16, 16)


# ------------------------------------------------------------------------ overfitting

def _mean_best_iou(det_masks: np.ndarray, gold: torch.Tensor) -> tuple[float, list[int]]:
    """Mean over gold segments of the best IoU with any detection, and the best detection of each."""
    g = gold.flatten(1).numpy().astype(np.float32)  # [G, P]
    if len(det_masks) == 0:
        return 0.0, [-1] * len(g)
    d = det_masks.reshape(len(det_masks), -1).astype(np.float32)  # [K, P]
    inter = g @ d.T
    iou = inter / (g.sum(1)[:, None] + d.sum(1)[None] - inter)  # [G, K]
    return float(iou.max(1).mean()), iou.argmax(1).tolist()


def test_segmenter_overfits_a_few_synthetic_frames(tmp_path):
    generate(SynthConfig(preset="hoi", videos=3, images=0, frames=4, size=32, seed=0, workers=1), tmp_path,
             progress=False)
    reader = open_dataset(tmp_path / "4d")
    names = list(reader.object_vocab)
    cfg = SegmenterConfig(class_names=names, stuff_names=["floor", "wall"], image_size=32, widths=(16, 32, 48),
                          hidden=32, num_queries=16, decoder_layers=3, heads=4, ffn=64)
    index = {c: i for i, c in enumerate(names)}
    rgbs, depths, targets = [], [], []
    for vid, t in [("hoi_train_00000", 0), ("hoi_train_00000", 3), ("hoi_val_00000", 1), ("hoi_test_00000", 2)]:
        video, graph = reader.read_video(vid), reader.read_graph(vid)
        rgb, depth = QuerySegmenter(config=cfg).preprocess(video, [t])
        rgbs.append(rgb)
        depths.append(depth)
        targets.append(frame_targets(graph, t, index, cfg.image_size))
    rgb, depth = torch.cat(rgbs), torch.cat(depths)  # [4, 3, 32, 32], [4, 1, 32, 32]
    assert sum(len(t["labels"]) for t in targets) >= 24

    torch.manual_seed(0)
    model = QuerySegmenter(config=cfg)
    crit = SegmentationLoss(config=cfg)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    history = []
    for step in range(150):
        loss = crit(model(rgb, depth), targets)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert all(math.isfinite(x) for x in history)
    first, last = np.mean(history[:3]), np.mean(history[-5:])
    assert last < first / 10, (first, last)  # typically ~40x on this data

    model.eval()
    dets = model.detect(model(rgb, depth))
    ious, correct, total = [], 0, 0
    for det, tg in zip(dets, targets):
        assert det.masks.sum(0).max() <= 1
        iou, best = _mean_best_iou(det.masks, tg["masks"])
        ious.append(iou)
        correct += sum(int(det.labels[k]) == int(lab) for k, lab in zip(best, tg["labels"]) if k >= 0)
        total += len(tg["labels"])
    # typically every gold segment is recovered with IoU ~1 and the right class
    assert np.mean(ious) >= 0.8, ious
    assert correct / total >= 0.9, (correct, total)
