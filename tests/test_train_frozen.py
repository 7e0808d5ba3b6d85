"""A stage may freeze only parameters that hold weights: pretrained, unused, or from its init checkpoint."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from test_train_toy import ToyModel, ToyOpener, toy_experiment, toy_factory
from torch import nn

from psg4d.errors import ConfigError
from psg4d.engine import checkpoint as ckpt
from psg4d.train import stages
from psg4d.train.loop import train
from psg4d.train.params import check_frozen_initialised, set_trainable

ALL = ["encoder", "projector", "llm", "obj_proj", "mask_decoder"]


class Interrupt(Exception):
    """Stands in for a kill: raised from the step hook."""


def _run(cfg, out, factory, **kw):
    return train(cfg, out_dir=out, model_factory=factory, opener=ToyOpener(), **kw)


def _stage(trainable, **kw):
    return {"name": "s1", "trainable": trainable, "max_steps": 12, **kw}


class SpareToy(ToyModel):
    """The toy plus ``spare``, a module forward never runs (like SAM2's point embeddings,
    kept so a pretrained checkpoint loads strictly), declared through ``unused_parameters``."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.spare = nn.Linear(2, 2)

    def unused_parameters(self) -> set[str]:
        return {"spare.weight", "spare.bias"}


class GrowToy(ToyModel):
    """The toy plus ``extra``, the head the test-only ``grow`` stage kind adds to the model."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.extra = nn.Linear(6, 1)

    def forward(self, x, y, video_ids=None):
        out = super().forward(x, y, video_ids)
        return {**out, "loss": out["loss"] + 0.01 * self.extra(x).square().mean()}


def _refusal(model, trainable, init_names=()):
    set_trainable(model, trainable)
    with pytest.raises(ConfigError) as e:
        check_frozen_initialised(model, stage_name="s1", init_names=init_names)
    return str(e.value)


def test_frozen_random_parameters_are_refused_grouped_by_module():
    msg = _refusal(ToyModel(), ["llm", "mask_decoder"])
    assert msg.startswith("stage 's1': frozen parameters that are not pretrained")
    assert "encoder (2 parameters), obj_proj (2 parameters), projector (2 parameters);" in msg
    assert "llm" not in msg.split("random:")[1].split(";")[0]
    # a module only part of which is random is named down to that part
    msg = _refusal(ToyModel(pretrained=("encoder.weight", "projector", "llm", "obj_proj")), ["mask_decoder"])
    assert "random: encoder.bias (1 parameter);" in msg


def test_pretrained_unused_and_init_parameters_may_stay_frozen():
    model = SpareToy(pretrained=("encoder",))
    set_trainable(model, ["llm", "mask_decoder"])
    frozen = check_frozen_initialised(
        model, stage_name="s1", init_names={"encoder.weight", "projector.weight", "projector.bias", "obj_proj.weight",
                                            "obj_proj.bias", "spare.weight"}
    )
    # each frozen module under its first reason: pretrained, then init checkpoint, then unused
    assert frozen.pretrained == ["encoder"]
    assert frozen.from_init == ["obj_proj", "projector", "spare.weight"]
    assert frozen.unused == ["spare.bias"]
    # without its declaration the spare module is just random
    undeclared = SpareToy(pretrained=("encoder", "projector", "obj_proj"))
    undeclared.unused_parameters = lambda: set()
    assert "random: spare (2 parameters);" in _refusal(undeclared, ["llm", "mask_decoder"])


def test_a_model_naming_unknown_parameters_breaks_the_contract():
    model = ToyModel()
    model.pretrained_parameters = lambda: {"module.encoder.weight"}
    set_trainable(model, ALL)
    with pytest.raises(ConfigError, match=re.escape("pretrained_parameters() names 1 unknown parameter(s)")):
        check_frozen_initialised(model, stage_name="s1", init_names=())


def test_train_refuses_the_stage_before_its_first_step(tmp_path):
    cfg = toy_experiment(tmp_path, stages=[_stage(["encoder", "llm", "mask_decoder"])])
    with pytest.raises(ConfigError, match=r"stage 's1': .*random: obj_proj \(2 parameters\), projector \(2 parameters\)"):
        _run(cfg, tmp_path / "out", toy_factory())
    assert ckpt.step_checkpoints(tmp_path / "out" / "s1") == []


def test_train_logs_the_frozen_pretrained_and_unused_modules(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="psg4d.train")
    cfg = toy_experiment(tmp_path, stages=[_stage(["llm", "obj_proj", "mask_decoder"], max_steps=2)])
    _run(cfg, tmp_path / "out", lambda model_cfg: SpareToy(pretrained=("encoder", "projector")))
    assert "stage s1: frozen modules, pretrained: encoder, projector; unused: spare" in caplog.messages


def test_a_resumed_stage_is_judged_by_its_init_not_by_last(tmp_path):
    """A frozen random parameter saved in `last` is still random."""
    out = tmp_path / "out"

    def hook(step):
        if step == 7:
            raise Interrupt

    with pytest.raises(Interrupt):
        _run(toy_experiment(tmp_path, stages=[_stage(ALL)]), out, toy_factory(), step_hook=hook)
    assert ckpt.find_last(out / "s1") is not None  # step 5 holds every module
    narrowed = toy_experiment(tmp_path, stages=[_stage(["encoder", "llm", "obj_proj", "mask_decoder"])])
    with pytest.raises(ConfigError, match=r"random: projector \(2 parameters\)"):
        _run(narrowed, out, toy_factory())


@pytest.fixture
def grow_kind(monkeypatch):
    monkeypatch.setitem(
        stages.STAGE_KINDS, "grow",
        stages.StageKind(default_trainable=("extra",), new_modules=("extra",)),
    )


def _two_stages(tmp_path, trainable):
    return toy_experiment(tmp_path, stages=[
        {"name": "base", "trainable": ALL, "max_steps": 3},
        {"name": "grow", "kind": "grow", "init": "previous", "trainable": trainable, "max_steps": 12},
    ])


def _base_then_grow():
    built = iter([ToyModel, GrowToy, GrowToy])
    return lambda model_cfg: next(built)()


def test_modules_from_the_init_checkpoint_may_stay_frozen_also_when_resuming(tmp_path, grow_kind, caplog):
    caplog.set_level(logging.INFO, logger="psg4d.train")
    cfg = _two_stages(tmp_path, ["extra"])
    out = tmp_path / "out"

    def hook(step):
        if step == 7:  # only the grow stage gets there
            raise Interrupt

    with pytest.raises(Interrupt):
        _run(cfg, out, _base_then_grow(), step_hook=hook)
    res = _run(cfg, out, lambda model_cfg: GrowToy())
    assert res.stages[0].skipped and res.stages[1].resumed_from_step == 5
    logged = [m for m in caplog.messages if m.startswith("stage grow: frozen modules")]
    assert len(logged) == 2 and all(m.endswith("final: encoder, llm, mask_decoder, obj_proj, projector") for m in logged)
    a, b = ToyModel.from_pretrained(out / "base" / "final"), GrowToy.from_pretrained(out / "grow" / "final")
    assert torch.equal(a.encoder.weight, b.encoder.weight)


def test_a_new_module_missing_from_the_init_checkpoint_must_train(tmp_path, grow_kind):
    cfg = _two_stages(tmp_path, ["llm"])
    with pytest.raises(ConfigError, match=r"stage 'grow': .*random: extra \(2 parameters\);"):
        _run(cfg, tmp_path / "out", _base_then_grow())
