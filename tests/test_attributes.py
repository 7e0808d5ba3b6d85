"""Attributes read from the frames (psg4d.model.attributes): the description fields of the synthetic
world, the head's loss against hand-computed values, reading a combination training never showed,
the attribute_fit stage's objective, and the chain's unknown-object outcome."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from psg4d.data.synth.describe import (
    FIXED_DESCRIPTIONS, attribute_values, category_descriptions, compose_description, description_fields,
)
from psg4d.errors import ConfigError
from psg4d.model.attributes import (
    IGNORE, AttributeHead, attribute_loss, attribute_table, contrast_scores, read_attributes, read_descriptions,
)


def test_every_world_description_splits_into_fields_and_back():
    for name, text in category_descriptions().items():
        fields = description_fields(text)
        if name in FIXED_DESCRIPTIONS:
            assert fields is None, name  # a hand is no combination of attribute words
            continue
        assert fields is not None and compose_description(fields) == text, (name, text, fields)
    assert description_fields("tall white capsule with red stripes") == {
        "size": "tall", "colour": "white", "shape": "capsule", "pattern": "stripes", "pattern colour": "red"}
    assert description_fields("small light green sphere")["colour"] == "light green"  # two-word colours
    assert description_fields("small red sphere with stripes") is None  # a pattern needs its colour


def test_the_table_gives_each_category_its_fields_and_ignores_the_rest():
    values = attribute_values()
    table = attribute_table(values, ["can", "hand"], {"can": ["small red cylinder with white stripes"],
                                                      "hand": ["skin-coloured palm on a sleeved forearm"]})
    assert table.shape == (3, len(values))
    assert [values[f][int(k)] for f, k in zip(values, table[0])] == ["small", "red", "cylinder", "stripes", "white"]
    assert (table[1] == IGNORE).all() and (table[2] == IGNORE).all()  # the hand; unlabelled


def test_the_loss_is_hand_computable():
    # fields: colour (red, blue), shape (sphere, cylinder, block)
    table = torch.tensor([[0, 1], [IGNORE, IGNORE], [IGNORE, IGNORE]])  # a red cylinder, a hand, unlabelled
    semantic = torch.full((1, 4, 4), 2)
    semantic[0, :2, :2] = 0  # one 2x2 cell of 4x4 pixels on a 2x2 grid: all red cylinder
    semantic[0, 2:, 2:] = 1  # the hand: no weight
    uniform = [torch.zeros(1, 2, 2, 2), torch.zeros(1, 3, 2, 2)]
    assert math.isclose(float(attribute_loss(uniform, semantic, table)), (math.log(2) + math.log(3)) / 2, rel_tol=1e-6)
    sure = [torch.zeros(1, 2, 2, 2), torch.zeros(1, 3, 2, 2)]
    sure[0][0, 0], sure[1][0, 1] = 20.0, 20.0  # right everywhere: near zero
    assert float(attribute_loss(sure, semantic, table)) < 1e-6
    assert float(attribute_loss(uniform, torch.full((1, 4, 4), 1), table)) == 0.0  # nothing with fields


def test_the_head_reads_a_combination_no_category_showed():
    """Trained on red cylinders and blue spheres, it reads a red sphere: colour from the frames'
    colours, shape from the maps, each field on its own."""
    torch.manual_seed(0)
    values = {"size": [""], "colour": ["red", "blue"], "shape": ["sphere", "cylinder"], "pattern": [""],
              "pattern colour": [""]}
    table = torch.tensor([[0, 0, 1, 0, 0], [0, 1, 0, 0, 0], [IGNORE] * 5])  # red cylinder, blue sphere, none
    head = AttributeHead(dim=2, values=values, hidden=16)

    def scene(colour: int, shape: int):
        rgb = torch.zeros(1, 3, 8, 8)
        dense = torch.zeros(1, 2, 4, 4)
        rgb[0, 0 if colour == 0 else 2, :4, :4] = 1.0  # red or blue in the top-left quarter
        dense[0, shape, :2, :2] = 1.0  # channel 0: sphere-like, 1: cylinder-like
        return dense + 0.05 * torch.randn_like(dense), rgb

    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    for step in range(150):
        (d1, r1), (d2, r2) = scene(0, 1), scene(1, 0)
        sem = torch.full((2, 8, 8), 2)
        sem[0, :4, :4], sem[1, :4, :4] = 0, 1
        loss = attribute_loss(head(torch.cat([d1, d2]), torch.cat([r1, r2])), sem, table)
        opt.zero_grad()
        loss.backward()
        opt.step()
    dense, rgb = scene(0, 0)  # a red sphere
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    mask[0, 0, :4, :4] = True
    assert read_descriptions(head, dense, rgb, mask) == ["red sphere"]
    assert read_descriptions(head, dense, rgb, torch.zeros_like(mask)) == [None]  # an empty tube


class _FixedHead(torch.nn.Module):
    """An attribute head whose per-cell logits are given (two fields, one frame, 2x2 cells)."""

    fields = ["colour", "shape"]
    values = {"colour": ["red", "blue"], "shape": ["sphere", "cylinder"]}

    def __init__(self, colour: torch.Tensor, shape: torch.Tensor):
        super().__init__()
        self.logits = [colour, shape]

    def forward(self, dense, rgb):
        return self.logits


def test_the_margin_is_how_much_better_the_reading_explains_the_tube_than_any_category():
    # every cell: colour log-probs (red, blue) = log(0.8, 0.2), shape (sphere, cylinder) = log(0.7, 0.3)
    colour = torch.log(torch.tensor([0.8, 0.2]))[None, :, None, None].expand(1, 2, 2, 2).clone()
    shape = torch.log(torch.tensor([0.7, 0.3]))[None, :, None, None].expand(1, 2, 2, 2).clone()
    head = _FixedHead(colour, shape)
    dense, rgb = torch.zeros(1, 4, 2, 2), torch.zeros(1, 3, 4, 4)
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask[0, 0, :2, :2] = True  # one cell of four
    known = torch.tensor([[0, 1], [1, 0], [IGNORE, IGNORE]])  # red cylinder, blue sphere, a category without fields
    (text, margin), = read_attributes(head, dense, rgb, mask, known)
    assert text == "red sphere"
    # read: log .8 + log .7; best known: red cylinder, log .8 + log .3 (blue sphere: log .2 + log .7)
    assert margin == pytest.approx(math.log(0.7) - math.log(0.3), abs=1e-4)
    (_, zero), = read_attributes(head, dense, rgb, mask, torch.tensor([[0, 0]]))  # red sphere is known
    assert zero == 0.0
    (_, none), = read_attributes(head, dense, rgb, mask)  # no table: no margin
    assert none == 0.0
    assert read_attributes(head, dense, rgb, torch.zeros_like(mask), known) == [None]


def _spilled_tube():
    """One frame of 4x4 cells: a red object in cell (1, 1) on a tan table; the tube covers the 2x2
    cells (0..1, 0..1), three of them table (a predicted tube spilling over its object's edges)."""
    colour = torch.log(torch.tensor([0.1, 0.9]))[None, :, None, None].expand(1, 2, 4, 4).clone()  # tan
    colour[0, :, 1, 1] = torch.log(torch.tensor([0.9, 0.1]))  # red
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    mask[0, 0, :4, :4] = True
    return colour, mask


def test_every_field_is_read_against_the_cells_around_the_tube():
    colour, mask = _spilled_tube()
    shape = colour.clone()  # the object's cell: a sphere (value 0); the table's: a cylinder (value 1)
    head = _FixedHead(colour, shape)
    head.values = {"colour": ["red", "tan"], "shape": ["sphere", "cylinder"]}
    dense, rgb = torch.zeros(1, 4, 4, 4), torch.zeros(1, 3, 8, 8)
    # summed under the tube, the table wins (log .1 + 3 log .9 against log .9 + 3 log .1); against the
    # ring (the five cells around it, all table) the tube holds more of the object than its surroundings
    assert read_descriptions(head, dense, rgb, mask) == ["red sphere"]
    assert [r[0] for r in read_attributes(head, dense, rgb, mask, reading="sum")] == ["tan cylinder"]
    with pytest.raises(ValueError, match="reading"):
        read_attributes(head, dense, rgb, mask, reading="mean")
    shape = torch.zeros(1, 2, 4, 4)
    head.logits = [colour, shape]
    # by hand: inside (red, tan) = (.3, .7), around = (.1, .9); q = (.2 + .01 * .3, .01 * .7)
    weight = torch.zeros(1, 1, 4, 4)
    weight[0, 0, :2, :2] = 1.0
    got = contrast_scores(colour.softmax(dim=1), weight)
    q = torch.tensor([0.2 + 0.003, 0.007])
    assert torch.allclose(got, torch.log(q / q.sum())[None], atol=1e-5)
    # an object the colour of its surroundings reads as the colour it holds most of
    tan = torch.log(torch.tensor([0.1, 0.9]))[None, :, None, None].expand(1, 2, 4, 4).clone()
    head.logits = [tan, shape]
    assert read_descriptions(head, dense, rgb, mask) == ["tan sphere"]
    # a tube that fills its frame has no ring: the colour it holds most of
    assert read_descriptions(head, dense, rgb, torch.ones_like(mask)) == ["tan sphere"]
    # the ring is per frame: in a second frame the object is elsewhere, and the ring follows the tube
    two = torch.cat([colour, colour.roll(shifts=(2, 2), dims=(2, 3))])
    head.logits = [two, torch.zeros(2, 2, 4, 4)]
    both = torch.cat([mask, mask.roll(shifts=(4, 4), dims=(2, 3))], dim=1)
    assert read_descriptions(head, torch.zeros(2, 4, 4, 4), torch.zeros(2, 3, 8, 8), both) == ["red sphere"]


def _described_config(**kw):
    from test_chain import chain_config

    return chain_config(**kw)


def test_the_attribute_objective_trains_only_the_head():
    from psg4d.model.psg4d_llm import PSG4DModel
    from test_chain import described_sample

    torch.manual_seed(0)
    cfg = _described_config(attribute_loss_weight=1.0)
    cfg.transfer.objective = "attributes"
    model = PSG4DModel.from_config(cfg).train()
    batch = model.collator([described_sample()])
    assert batch["semantic"] is not None  # the head's targets come with every batch
    out = model(**batch)
    assert set(out) == {"loss", "loss_attr"} and float(out["loss"]) > 0
    out["loss"].backward()
    grads = {n.split(".")[0] for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads == {"attribute_head"}
    # in the LLM stages it is one more auxiliary loss
    cfg2 = _described_config(attribute_loss_weight=1.0)
    out2 = PSG4DModel.from_config(cfg2).train()(**model.collator([described_sample()]))
    assert "loss_attr" in out2


def test_an_attribute_head_needs_descriptions_and_its_stage_the_transfer():
    from psg4d.model.psg4d_llm import PSG4DModel
    from test_model_psg4d import tiny_config

    with pytest.raises(ConfigError, match="category descriptions"):
        PSG4DModel.from_config(tiny_config(attribute_loss_weight=1.0))
    from psg4d.train.stages import experiment_from_data, load_yaml, PRESET_DIR

    data = load_yaml(PRESET_DIR / "hoi_tiny.yaml")
    data["data"] = {"root": "/nowhere", "train": [{"path": "4d"}], "val": []}
    data["stages"] = [{"name": "a", "kind": "4d_init", "max_steps": 1},
                      {"name": "b", "kind": "attribute_fit", "max_steps": 1, "init": "previous"}]
    with pytest.raises(ConfigError, match="keeps the modules of an earlier estimator_fit"):
        experiment_from_data(data, where="test")


def test_an_unknown_object_is_named_from_what_the_frames_read():
    """The chain's describe turn says "water dispenser" in words training saw, but the frames read a
    description no training category has: the object is unknown and named by language from the read
    words. (Two different categories: items of one category whose tubes overlap are one object, and
    this untrained model's tubes all overlap.)"""
    from psg4d.infer.chain import ChainPredictor
    from psg4d.infer.predictor import PredictorConfig
    from psg4d.model.psg4d_llm import PSG4DModel
    from test_chain import _fake_turns, described_sample

    torch.manual_seed(0)
    model = PSG4DModel.from_config(_described_config(attribute_loss_weight=1.0))
    vocabulary = ["apple", "cup", "globe"]
    predictor = ChainPredictor(model=model, config=PredictorConfig(mode="chain", vocabulary=vocabulary,
                                                                   constrained=False))
    _fake_turns(predictor, ["1 small red cylinder : water dispenser [Obj] ; 2 flat blue block : cup [Obj]", "1 2", "1 on 2",
                            "1 on 2 0 3"])
    predictor.generator.read_attributes = lambda ctx, video, hidden: [("small red sphere", 1.0), ("flat blue block", 0.0)]
    first, second = predictor.predict(described_sample().video).objects
    assert "unknown object" in first.attributes["category_source"] and first.category in vocabulary
    assert first.attributes["read_description"] == "small red sphere" and first.attributes["model_category"] == "water dispenser"
    assert second.attributes["category_source"] == "model"  # what it read is a training description
    # unknown_objects=False: the reading is recorded, the written description decides the name
    predictor = ChainPredictor(model=model, config=PredictorConfig(mode="chain", vocabulary=vocabulary,
                                                                   constrained=False, unknown_objects=False))
    _fake_turns(predictor, ["1 small red cylinder : water dispenser [Obj] ; 2 flat blue block : cup [Obj]", "1 2", "1 on 2",
                            "1 on 2 0 3"])
    predictor.generator.read_attributes = lambda ctx, video, hidden: [("small red sphere", 1.0), ("flat blue block", 0.0)]
    first, _ = predictor.predict(described_sample().video).objects
    assert first.category == "water dispenser" and first.attributes["category_source"] == "model"
    assert first.attributes["read_description"] == "small red sphere"


def test_the_unknown_outcome_needs_a_margin_and_a_describable_name_and_renaming_repeats_it():
    """A reading no category has makes an unknown object only past ``unknown_margin``, and only
    where the written name is one the head can describe; ``rename`` names a prediction again
    under other settings exactly as predicting with them would."""
    from psg4d.infer.chain import ChainPredictor
    from psg4d.infer.chain_naming import UNCHOSEN_MARGIN
    from psg4d.infer.predictor import PredictorConfig
    from psg4d.model.psg4d_llm import PSG4DModel
    from test_chain import _fake_turns, described_sample

    torch.manual_seed(0)
    model = PSG4DModel.from_config(_described_config(attribute_loss_weight=1.0))
    vocabulary = ["apple", "cup", "globe"]
    turns = ["1 tall skin-coloured agent : person [Obj] ; 2 small red cylinder : water dispenser [Obj]", "1 2",
             "1 on 2", "1 on 2 0 3"]

    def predict(**kw):
        predictor = ChainPredictor(model=model, config=PredictorConfig(mode="chain", vocabulary=vocabulary,
                                                                       constrained=False, tag_objects=False, **kw))
        _fake_turns(predictor, turns)
        predictor.generator.read_attributes = lambda ctx, video, hidden: [("small red sphere", 1.5)] * 2
        return predictor, predictor.predict(described_sample().video)

    predictor, pred = predict()
    person, dispenser = pred.objects
    assert predictor.naming.unknown_margin == 0.0 and predictor.naming.unknown_margin_chosen_on == UNCHOSEN_MARGIN
    assert person.category == "person" and person.attributes["category_source"] == "model"  # no fields: not judged
    assert "unknown object" in dispenser.attributes["category_source"] and dispenser.attributes["read_margin"] == 1.5
    assert pred.meta["chain"]["unknown_margin"] == {"margin": 0.0, "chosen_on": UNCHOSEN_MARGIN, "applied": True}

    wide, kept = predict(unknown_margin=2.0)  # the reading is not 2 nats better than a known one
    assert [o.category for o in kept.objects] == ["person", "water dispenser"]
    assert all(o.attributes["category_source"] == "model" for o in kept.objects)
    renamed = wide.naming.rename(pred)
    assert [(o.category, o.attributes["category_source"]) for o in renamed.objects] == \
           [(o.category, o.attributes["category_source"]) for o in kept.objects]
    assert renamed.meta["chain"]["unknown_margin"]["margin"] == 2.0
    assert renamed.relations == pred.relations and [o.tube for o in renamed.objects] == [o.tube for o in pred.objects]
    back = predictor.naming.rename(renamed)  # and back: the unknown object again, named as before
    assert [(o.category, o.attributes["category_source"]) for o in back.objects] == \
           [(o.category, o.attributes["category_source"]) for o in pred.objects]


def test_tune_ranking_chooses_the_unknown_margin_on_validation_objects(monkeypatch):
    """With an attribute head, choosing --mode auto also chooses the unknown-object margin: the one
    that keeps 95 % of the validation objects the gate judges (read, with a describable written
    name) at or below it; the chain is then scored named under it."""
    from psg4d.infer.chain import ChainPredictor
    from psg4d.infer.predictor import Predictor, PredictorConfig
    from psg4d.infer.ranking import RankingWeights
    from psg4d.model.psg4d_llm import PSG4DModel
    from psg4d.tune_ranking import choose_mode, scores
    from test_chain import described_sample

    torch.manual_seed(0)
    model = PSG4DModel.from_config(_described_config(attribute_loss_weight=1.0))
    sample = described_sample()
    truth = {sample.graph.video_id: sample.graph}
    predictor = Predictor(model=model, ranking=RankingWeights())
    direct = scores([predictor.predict(sample.video)], truth)

    from psg4d.infer.predictor import ScoredCandidates
    from psg4d.model.chain_text import ChainObject
    from psg4d.model.reading import Tube

    g = sample.graph
    # 20 judged objects (margins 0.0 .. 1.9) and a person, whose name has no fields: not judged
    written = [ChainObject(k + 1, "flat blue block", "cup", k) if k % 2 else
               ChainObject(k + 1, "small red cylinder", "water dispenser", k) for k in range(20)]
    written.append(ChainObject(21, "tall skin-coloured agent", "person", 20))
    read = [("small red sphere", k / 10) for k in range(20)] + [("small red sphere", 9.0)]

    def score_candidates(self, video):
        objects = [(o.category, Tube([None] * g.num_frames, 0.5)) for o in written]
        items = [{"index": o.index, "description": o.description, "object_id": k} for k, o in enumerate(written)]
        meta = {"mode": "chain", "chain": {"steps": [{"step": "describe", "items": []}], "problems": 0}}
        return ScoredCandidates(video_id=g.video_id, num_frames=g.num_frames, size=(g.height, g.width),
                                objects=objects, candidates=[], owner=np.arange(g.num_frames), meta=meta,
                                extra={"written": written, "read": read, "items": items})

    monkeypatch.setattr(ChainPredictor, "score_candidates", score_candidates)
    record, chosen = choose_mode(predictor, RankingWeights(), direct, [sample.video], truth, "these videos")
    # 19 of the 20 judged margins at or below 1.8
    assert chosen["unknown_margin"] == {"margin": 1.8, "keep": 0.95, "objects": 20, "chosen_on": "these videos"}
    assert len(chosen["chain_ranking"]["tried"]) == 30 and chosen["chain_ranking"]["chosen_on"] == "these videos"
    assert record["chosen_on"] == "these videos" and set(direct) <= set(record["chain"])
    # ranked under the chosen margin: only the object read 1.9 past it is an unknown object
    named = ChainPredictor(model=model, config=PredictorConfig(mode="chain", unknown_margin=1.8)).rank(
        score_candidates(None, sample.video))
    unknown = [o.attributes["read_margin"] for o in named.objects if "unknown object" in o.attributes["category_source"]]
    assert unknown == [1.9]
