"""Stage and experiment configs: the kind table, validation and the errors a user sees."""

from __future__ import annotations

from pathlib import Path

import pytest

from psg4d.config import from_dict
from psg4d.errors import ConfigError
from psg4d.train.stages import STAGE_KINDS, ExperimentConfig, StageConfig, load_experiment


def _exp(**over):
    data = {
        "model": {},
        "data": {"train": [{"path": "d"}]},
        "stages": [{"name": "s1", "max_steps": 3}],
    }
    data.update(over)
    return from_dict(ExperimentConfig, data)


def test_stage_kind_table_holds_stage_one_with_its_defaults():
    assert "4d_init" in STAGE_KINDS
    kind = STAGE_KINDS["4d_init"]
    assert not kind.lifts_2d and kind.new_modules == ()
    stage = StageConfig(name="s", max_steps=1)
    assert stage.trainable_prefixes() == list(kind.default_trainable)
    assert StageConfig(name="s", max_steps=1, trainable=["llm"]).trainable_prefixes() == ["llm"]
    # the kind's optional modules join when the model has them
    present = ["encoder", "llm", "tag_head"]
    assert StageConfig(name="s", max_steps=1, trainable=["llm"]).trainable_prefixes(present) == ["llm", "tag_head"]


def test_lift_2d_is_rejected_naming_the_stage_that_needs_estimators():
    with pytest.raises(ConfigError) as e:
        _exp(stages=[{"name": "s1", "max_steps": 3, "data": [{"path": "psg2d", "lift_2d": True}]}])
    msg = str(e.value)
    assert "lift_2d" in msg and "estimators" in msg and "'transfer_2d'" in msg and "psg2d" in msg


@pytest.mark.parametrize(
    ("stages", "pattern"),
    [
        ([{"name": "s1", "kind": "transfer_3d", "max_steps": 3}],
         r"unknown stage kind 'transfer_3d' \(did you mean 'transfer_2d'\?\); valid kinds: \['4d_init', 'attribute_fit', 'estimator_fit', 'finetune_4d', 'pseudo4d_init',"
         r" 'sam2_pretrain', 'transfer_2d'\]"),
        ([{"name": "s1"}], "exactly one of max_steps and epochs"),
        ([{"name": "s1", "max_steps": 3, "epochs": 1.0}], "exactly one of max_steps and epochs"),
        ([{"name": "s1", "max_steps": 3, "init": "previous"}], "first stage"),
        ([{"name": "s1", "max_steps": 3}, {"name": "s1", "max_steps": 3}], "duplicate stage name"),
        ([{"name": "a/b", "max_steps": 3}], "plain folder name"),
        ([{"name": "s1", "max_steps": 3, "data": [{"path": "d", "weight": 0}]}], "weight must be > 0"),
        ([], "at least one stage"),
    ],
)
def test_invalid_stages_are_config_errors(stages, pattern):
    with pytest.raises(ConfigError, match=pattern):
        _exp(stages=stages)


def test_stage_without_data_needs_data_train():
    with pytest.raises(ConfigError, match="no training data"):
        _exp(data={"train": []})
    cfg = _exp(data={"train": []}, stages=[{"name": "s1", "max_steps": 2, "data": [{"path": "x"}]}])
    assert cfg.stage_data(cfg.stages[0])[0].path == "x"


def test_loss_weight_overrides_apply_to_the_model_config():
    import dataclasses

    cfg = _exp()
    loss = getattr(cfg.model, "loss", None)
    assert loss is not None and dataclasses.is_dataclass(loss), "ModelConfig has a loss section"
    name = dataclasses.fields(loss)[0].name
    cfg = _exp(stages=[{"name": "s1", "max_steps": 2, "loss_weights": {name: 0.25}}])
    assert getattr(cfg.model_config_for(cfg.stages[0]).loss, name) == 0.25
    assert getattr(cfg.model.loss, name) == getattr(loss, name)  # the shared model config is not modified
    with pytest.raises(ConfigError, match="unknown loss weight"):
        _exp(stages=[{"name": "s1", "max_steps": 2, "loss_weights": {"no_such_loss": 1.0}}])


def test_load_experiment_applies_overrides(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("model: {}\ndata: {train: [{path: d}]}\nstages: [{name: s1, max_steps: 3}]\n")
    cfg = load_experiment(path, ["train.lr=0.5", "stages=[{name: only, epochs: 2}]", "seed=9"])
    assert cfg.train.lr == 0.5 and cfg.seed == 9 and cfg.stages[0].name == "only" and cfg.stages[0].epochs == 2
    with pytest.raises(ConfigError, match="unknown key"):
        load_experiment(path, ["train.learning_rate=1"])
    (tmp_path / "nomodel.yaml").write_text("stages: []\n")
    with pytest.raises(ConfigError, match="missing the `model` section"):
        load_experiment(tmp_path / "nomodel.yaml")


def test_optimizer_and_scheduler_names_are_the_tables_of_train_optim():
    """The config's name lists and the builders in train.optim are one set: a name the loader
    accepts always builds, and every builder can be named."""
    from typing import get_args

    from psg4d.engine.optim import OPTIMIZERS, SCHEDULERS
    from psg4d.train.stages import OptimizerName, SchedulerName

    assert set(get_args(OptimizerName)) == set(OPTIMIZERS)
    assert set(get_args(SchedulerName)) == set(SCHEDULERS)
    with pytest.raises(ConfigError, match=r"train.optimizer.*'adamm'.*did you mean 'adamw'"):
        from_dict(ExperimentConfig, {"train": {"optimizer": "adamm"}, "stages": [{"name": "a", "kind": "4d_init"}]})


def test_a_bad_override_is_blamed_on_the_set_not_the_preset_file(tmp_path):
    """The preset file is fine; the value came from the command line, so the message says so."""
    import psg4d

    preset = Path(psg4d.__file__).parent / "configs" / "hoi_tiny.yaml"
    good = tmp_path / "exp.yaml"
    good.write_text(f"_base_: {preset}\n")
    with pytest.raises(ConfigError, match=r"^--set train\.lr=-1: train\.lr: must be a finite number > 0"):
        load_experiment(good, ["train.lr=-1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"_base_: {preset}\ntrain:\n  lr: -1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: train\.lr: must be a finite number > 0"):
        load_experiment(bad, ["train.batch_size=2"])
