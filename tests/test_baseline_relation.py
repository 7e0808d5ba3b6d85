"""The pipeline baseline's relation stage: targets from gold graphs, the relation model, predict."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from psg4d.baseline.config import RelationConfig
from psg4d.baseline.relation import RelationModel, training_pairs
from psg4d.baseline.targets import RelationTargets, match_tubes_to_gold, relation_targets
from psg4d.baseline.types import GEOMETRY_DIM, TrackedTubes, frame_geometry
from psg4d.data.schema import MaskTube, ObjectTrack, Relation, SceneGraph4D

CLASSES = ["person", "cup", "table"]
PREDICATES = ["holding", "on", "near"]
FEAT_DIM = 16


def _box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def _tubes(masks: np.ndarray, labels: list[int], *, seed: int = 0) -> TrackedTubes:
    """TrackedTubes by hand: valid where the mask is non-empty, one-hot class probabilities."""
    n, t = masks.shape[:2]
    rng = np.random.default_rng(seed)
    valid = masks.any(axis=(2, 3))
    geometry = np.zeros((n, t, GEOMETRY_DIM), np.float32)
    for i in range(n):
        for f in range(t):
            geometry[i, f] = frame_geometry(masks[i, f], None)
    feats = rng.normal(size=(n, t, FEAT_DIM)).astype(np.float32) * valid[..., None]
    probs = np.zeros((n, len(CLASSES)), np.float32)
    probs[np.arange(n), labels] = 1.0
    frame_labels = np.where(valid, np.asarray(labels, np.int64)[:, None], -1)
    return TrackedTubes(masks=masks, valid=valid, feats=feats, geometry=geometry, class_probs=probs,
                        labels=np.asarray(labels, np.int64), frame_labels=frame_labels,
                        scores=np.ones(n, np.float32))


# ---------------------------------------------------------------------------------- targets

T = 6


def _gold() -> SceneGraph4D:
    """Gold at 16x16 (twice the tubes' 8x8, so the nearest resize is exact)."""
    full = lambda m: MaskTube.from_dense(np.repeat(m[None], T, 0))  # noqa: E731
    objects = [
        ObjectTrack(object_id=10, category="person", tube=full(_box(16, 16, 0, 8, 0, 8))),
        ObjectTrack(object_id=20, category="cup", tube=full(_box(16, 16, 8, 16, 8, 16))),
        ObjectTrack(object_id=30, category="table", tube=full(_box(16, 16, 0, 8, 8, 16))),
    ]
    relations = [
        Relation(10, 20, "holding", [(1, 4)]),
        Relation(10, 20, "near", [(5, 5)]),  # only in a frame the cup's tube is not matched
        Relation(20, 30, "on", [(0, 5)]),
        Relation(30, 10, "near", [(2, 3)]),
        Relation(10, 30, "flying", [(0, 5)]),  # unknown predicate: ignored, (0, 3) stays negative
    ]
    return SceneGraph4D(video_id="v", num_frames=T, height=16, width=16, objects=objects,
                        relations=relations).validate()


def _pred_tubes() -> TrackedTubes:
    person, cup, table = _box(8, 8, 0, 4, 0, 4), _box(8, 8, 4, 8, 4, 8), _box(8, 8, 0, 4, 4, 8)
    elsewhere = _box(8, 8, 4, 8, 0, 4)
    masks = np.zeros((5, T, 8, 8), bool)
    masks[0] = person  # exact
    masks[1, :4] = cup  # exact in frames 0-3, then drifts off
    masks[1, 4:] = elsewhere
    masks[2] = table  # on the table but labelled "person": wrong class
    masks[3] = table  # exact
    masks[4, :3] = cup  # 3 good frames (enough) but tube 1 has 4: one-to-one leaves it out
    return _tubes(masks, [0, 1, 0, 2, 1])


def test_match_and_targets_by_hand():
    tubes, gold = _pred_tubes(), _gold()
    match = match_tubes_to_gold(tubes, gold, CLASSES, match_iou=0.5, min_matched_frames=0.5)
    assert match.gold_ids.tolist() == [10, 20, -1, 30, -1]
    mf = match.matched_frames
    assert mf.shape == (5, T) and mf.dtype == bool
    assert mf[0].all() and mf[3].all()
    assert mf[1].tolist() == [True] * 4 + [False] * 2
    assert not mf[2].any() and not mf[4].any()

    tg = relation_targets(match, gold, PREDICATES)
    assert tg.pairs.dtype == np.int64 and tg.pairs.tolist() == [[0, 1], [1, 3], [3, 0]]
    expected_pair = np.zeros((5, 5), np.float32)
    expected_pair[0, 1] = expected_pair[1, 3] = expected_pair[3, 0] = 1
    np.testing.assert_array_equal(tg.pair, expected_pair)
    assert tg.pair.dtype == np.float32 and tg.predicates.dtype == np.float32 and tg.spans.dtype == np.float32
    np.testing.assert_array_equal(tg.predicates, [[1, 0, 1], [0, 1, 0], [0, 0, 1]])
    assert tg.span_mask.tolist() == [[True] * 4 + [False] * 2, [True] * 4 + [False] * 2, [True] * 6]
    assert tg.spans.shape == (3, T, 3)
    assert tg.spans[0, :, 0].tolist() == [0, 1, 1, 1, 0, 0]  # gold 1-4, cut to the matched 0-3
    assert not tg.spans[0, :, 2].any()  # "near" holds in frame 5 only, unmatched for the cup
    assert tg.spans[1, :, 1].tolist() == [1, 1, 1, 1, 0, 0]
    assert tg.spans[2, :, 2].tolist() == [0, 0, 1, 1, 0, 0]
    assert tg.spans.sum() == 3 + 4 + 2  # nothing in other columns or outside span_mask


def test_match_thresholds_and_errors():
    tubes, gold = _pred_tubes(), _gold()
    # a stricter share: the cup's tube (4 of 6 frames) no longer qualifies, the 3-frame one neither
    strict = match_tubes_to_gold(tubes, gold, CLASSES, match_iou=0.5, min_matched_frames=0.8)
    assert strict.gold_ids.tolist() == [10, -1, -1, 30, -1]
    assert relation_targets(strict, gold, PREDICATES).pairs.tolist() == [[3, 0]]
    bad = SceneGraph4D(video_id="v", num_frames=T + 1, height=16, width=16)
    with pytest.raises(ValueError, match="frames"):
        match_tubes_to_gold(tubes, bad, CLASSES, match_iou=0.5, min_matched_frames=0.5)
    empty = _tubes(np.zeros((0, T, 8, 8), bool), [])
    m0 = match_tubes_to_gold(empty, gold, CLASSES, match_iou=0.5, min_matched_frames=0.5)
    tg0 = relation_targets(m0, gold, PREDICATES)
    assert m0.gold_ids.shape == (0,) and tg0.pair.shape == (0, 0) and tg0.pairs.shape == (0, 2)
    assert tg0.predicates.shape == (0, 3) and tg0.spans.shape == (0, T, 3) and tg0.span_mask.shape == (0, T)


# ---------------------------------------------------------------------------------- model


def _config(**kw) -> RelationConfig:
    base = dict(predicate_names=list(PREDICATES), num_classes=len(CLASSES), feat_dim=FEAT_DIM, hidden=32,
                heads=4, spatial_layers=1, temporal_layers=1, max_pairs=6, max_frames=16, dropout=0.0)
    base.update(kw)
    return RelationConfig(**base)


def _inputs(n: int, t: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    valid = torch.rand(n, t, generator=g) > 0.3
    if n:
        valid[:, 2] = False  # a frame where nothing is valid
        valid[0] = False  # a tube never valid
    x0 = torch.rand(n, t, 2, generator=g) * 0.5
    geometry = torch.cat([x0, x0 + 0.3, torch.rand(n, t, 2, generator=g)], -1) * valid[..., None]
    return (torch.randn(n, t, FEAT_DIM, generator=g) * valid[..., None], geometry,
            torch.rand(n, len(CLASSES), generator=g), valid)


@pytest.mark.parametrize("use_temporal", [True, False])
@pytest.mark.parametrize("n", [0, 1, 5])
def test_forward_shapes_and_finite(n, use_temporal):
    torch.manual_seed(0)
    model = RelationModel(config=_config(use_temporal=use_temporal, dropout=0.1))
    feats, geometry, probs, valid = _inputs(n)
    t, r = valid.shape[1], len(PREDICATES)
    for train in (True, False):
        model.train(train)
        out = model(feats, geometry, probs, valid)
        p = min(6, n * (n - 1))
        assert out["pair_logits"].shape == (n, n)
        assert out["pairs"].shape == (p, 2) and out["pairs"].dtype == torch.long
        assert out["predicate_logits"].shape == (p, r) and out["span_logits"].shape == (p, t, r)
        assert all(torch.isfinite(v.float()).all() for v in out.values())
        if n:
            assert (out["pairs"][:, 0] != out["pairs"][:, 1]).all()
            assert torch.isfinite(out["pair_logits"].diagonal()).all() and (out["pair_logits"].diagonal() < -100).all()
    given = torch.tensor([[i, (i + 1) % n] for i in range(n)] if n > 1 else [], dtype=torch.long).reshape(-1, 2)
    out = model(feats, geometry, probs, valid, pairs=given)
    assert out["pairs"].tolist() == given.tolist()
    assert out["span_logits"].shape == (len(given), t, r) and torch.isfinite(out["span_logits"]).all()


@pytest.mark.parametrize("n", [0, 1, 5])
def test_loss_finite_with_invalid_frames(n):
    torch.manual_seed(0)
    model = RelationModel(config=_config())
    feats, geometry, probs, valid = _inputs(n)
    t, r = valid.shape[1], len(PREDICATES)
    pair = np.zeros((n, n), np.float32)
    pairs = np.array([[1, 2], [3, 0]] if n > 3 else [], np.int64).reshape(-1, 2)
    pair[pairs[:, 0], pairs[:, 1]] = 1
    tg = RelationTargets(pair=pair, pairs=pairs, predicates=np.ones((len(pairs), r), np.float32),
                         spans=np.ones((len(pairs), t, r), np.float32), span_mask=np.ones((len(pairs), t), bool))
    sel = training_pairs(tg, None, 6, np.random.default_rng(0))
    out = model(feats, geometry, probs, valid, pairs=sel)
    losses = model.loss(out, tg)
    assert set(losses) == {"loss", "loss_pair", "loss_predicate", "loss_span"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    losses["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_training_pairs_positives_first_then_hard_negatives():
    n = 4
    pair = np.zeros((n, n), np.float32)
    pair[2, 1] = pair[0, 3] = 1
    tg = RelationTargets(pair=pair, pairs=np.array([[0, 3], [2, 1]]), predicates=np.ones((2, 3), np.float32),
                         spans=np.zeros((2, 5, 3), np.float32), span_mask=np.zeros((2, 5), bool))
    logits = torch.zeros(n, n)
    logits[3, 2], logits[1, 0] = 5.0, 4.0
    got = training_pairs(tg, logits, 4, np.random.default_rng(0))
    assert got.dtype == torch.long and got.tolist() == [[0, 3], [2, 1], [3, 2], [1, 0]]
    rand = training_pairs(tg, None, 100, np.random.default_rng(0)).tolist()
    assert rand[:2] == [[0, 3], [2, 1]] and len(rand) == n * (n - 1)
    assert len({tuple(p) for p in rand}) == len(rand) and all(i != j for i, j in rand)
    assert training_pairs(tg, None, 1, np.random.default_rng(0)).tolist() == [[0, 3], [2, 1]]


# ---------------------------------------------------------------------------------- overfitting

ST = 8
GOLD_TRIPLETS = {(0, 1, "holding"), (1, 2, "on")}


def _synthetic() -> tuple[TrackedTubes, SceneGraph4D]:
    """4 tubes (person, cup, table, person) on 16x16, 8 frames; gold: person holding cup, cup on table."""
    boxes = [_box(16, 16, 0, 6, 0, 6), _box(16, 16, 6, 10, 6, 10), _box(16, 16, 10, 16, 0, 16),
             _box(16, 16, 0, 6, 10, 16)]
    masks = np.repeat(np.stack(boxes)[:, None], ST, 1)
    masks[3, 6:] = False  # the second person leaves
    tubes = _tubes(masks, [0, 1, 2, 0], seed=1)
    objects = [ObjectTrack(object_id=k, category=CLASSES[c], tube=MaskTube.from_dense(masks[k]))
               for k, c in enumerate([0, 1, 2, 0])]
    relations = [Relation(0, 1, "holding", [(2, 6)]), Relation(1, 2, "on", [(0, 7)])]
    gold = SceneGraph4D(video_id="s", num_frames=ST, height=16, width=16, objects=objects, relations=relations)
    return tubes, gold.validate()


@pytest.fixture(scope="module")
def overfit():
    torch.manual_seed(0)
    tubes, gold = _synthetic()
    cfg = _config()
    match = match_tubes_to_gold(tubes, gold, CLASSES, match_iou=cfg.match_iou, min_matched_frames=cfg.min_matched_frames)
    targets = relation_targets(match, gold, PREDICATES)
    assert targets.pairs.tolist() == [[0, 1], [1, 2]]
    model = RelationModel(config=cfg)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    inputs = [torch.from_numpy(a) for a in (tubes.feats, tubes.geometry, tubes.class_probs, tubes.valid)]
    losses, logits = [], None
    for _ in range(30):
        pairs = training_pairs(targets, logits, cfg.max_pairs, rng)
        out = model(*inputs, pairs=pairs)
        loss = model.loss(out, targets)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        logits = out["pair_logits"].detach()
    return model, tubes, losses


def test_loss_falls(overfit):
    _, _, losses = overfit
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.3 * losses[0], losses


def _check_triplets(triplets, tubes: TrackedTubes, top_k: int):
    assert len(triplets) <= top_k
    scores = [s for _, _, _, s, _ in triplets]
    assert scores == sorted(scores, reverse=True)
    assert len({(i, j, p) for i, j, p, _, _ in triplets}) == len(triplets)
    for i, j, p, s, spans in triplets:
        assert type(i) is int and type(j) is int and type(s) is float and i != j
        assert 0 <= i < len(tubes) and 0 <= j < len(tubes) and p in PREDICATES and 0 <= s <= 1
        assert spans and all(isinstance(a, int) and isinstance(b, int) and a <= b for a, b in spans)
        assert all(b0 + 1 < a1 for (_, b0), (a1, _) in zip(spans, spans[1:]))  # sorted, merged
        for a, b in spans:
            assert tubes.valid[i, a:b + 1].all() and tubes.valid[j, a:b + 1].all()


def test_predict_after_overfitting(overfit):
    model, tubes, _ = overfit
    model.train()
    triplets = model.predict(tubes)
    assert model.training  # predict restores the mode it found
    _check_triplets(triplets, tubes, model.config.top_k)
    assert triplets == model.predict(tubes)  # deterministic
    top = triplets[0]
    assert (top[0], top[1], top[2]) in GOLD_TRIPLETS, triplets[:5]
    assert {(i, j, p) for i, j, p, _, _ in triplets[:2]} == GOLD_TRIPLETS, triplets[:5]
    spans = {(i, j, p): s for i, j, p, _, s in triplets[:2]}
    assert spans == {(0, 1, "holding"): [(2, 6)], (1, 2, "on"): [(0, 7)]}, triplets[:2]


def test_predict_untrained_well_formed():
    torch.manual_seed(0)
    model = RelationModel(config=_config(top_k=7, span_threshold=0.9))
    tubes, _ = _synthetic()
    tubes.valid[:, 3] = False  # a frame where nothing is valid
    tubes.valid[3, :5] = False  # tube 3 valid in frame 5 only
    triplets = model.predict(tubes)
    _check_triplets(triplets, tubes, 7)
    assert len(triplets) == 7
    one = _tubes(np.ones((1, 4, 8, 8), bool), [0])
    assert model.predict(one) == [] and model.predict(_tubes(np.zeros((0, 4, 8, 8), bool), [])) == []
