"""The training loop on the toy model: losses, freezing, lr groups, checkpoints, resume."""

from __future__ import annotations

import json
import math
import os
import re
import shutil

import pytest
import torch
from test_model_pretrained import assert_still_readable, flip_middle_bytes
from test_train_toy import PREDICATES, ToyModel, ToyOpener, ToyReader, toy_experiment, toy_factory

from psg4d.data.schema import MaskTube, ObjectTrack, Relation, SceneGraph4D
from psg4d.errors import CheckpointError, ConfigError
from psg4d.model.weight_files import WEIGHTS_SHA256, file_sha256
from psg4d.engine import checkpoint as ckpt
from psg4d.engine.metrics import read_metrics
from psg4d.train.data import with_data_vocab
from psg4d.train.loop import train
from psg4d.train.params import build_scheduler, param_groups, set_trainable
from psg4d.train.stages import TrainConfig


class Interrupt(Exception):
    """Stands in for a kill: raised from the step hook."""


def _run(cfg, out, **kw):
    return train(cfg, out_dir=out, model_factory=kw.pop("factory", toy_factory()), opener=ToyOpener(), **kw)


def _losses(path):
    return [(r["step"], r["loss"]) for r in read_metrics(path) if "loss" in r]


def _weights(ckpt_dir):
    return ToyModel.from_pretrained(ckpt_dir).state_dict()


def _rerecord_sha256(ckpt_dir):
    """Record the hash of a weights file a test rewrote on purpose."""
    meta = json.loads((ckpt_dir / ckpt.TRAINER_META).read_text())
    meta[WEIGHTS_SHA256] = file_sha256(ckpt_dir / ckpt.MODEL_WEIGHTS)
    (ckpt_dir / ckpt.TRAINER_META).write_text(json.dumps(meta))


def test_train_writes_metrics_checkpoints_and_learns(tmp_path):
    cfg = toy_experiment(tmp_path, stages=[{"name": "s1", "trainable": ["encoder", "projector", "llm", "obj_proj",
                                                                        "mask_decoder"], "max_steps": 40}],
                         train__save_every=10)
    res = _run(cfg, tmp_path / "out")
    st = res.stages[0]
    assert st.steps == 40 and not st.skipped and st.resumed_from_step is None
    recs = read_metrics(tmp_path / "out" / "s1" / "metrics.jsonl")
    train_recs = [r for r in recs if "loss" in r]
    assert [r["step"] for r in train_recs] == list(range(1, 41))
    assert {"lr", "time_s", "steps_per_s", "grad_norm", "mse", "abs_err", "epoch"} <= set(train_recs[0])
    # warmup: the first step runs at half the rate, the cosine ends near zero
    assert train_recs[0]["lr"] == pytest.approx(3e-3 / 2)
    assert train_recs[-1]["lr"] < 1e-4
    first = sum(r["loss"] for r in train_recs[:8]) / 8
    final = sum(r["loss"] for r in train_recs[-8:]) / 8
    assert final < 0.8 * first
    stage_dir = tmp_path / "out" / "s1"
    assert [p.name for _, p in ckpt.step_checkpoints(stage_dir)] == ["step_00000030", "step_00000040"]
    assert os.readlink(stage_dir / "last") == "step_00000040"
    assert (tmp_path / "out" / "final").resolve() == (stage_dir / "final").resolve()
    assert res.final_dir == stage_dir / "final"
    # the final folder is an inference checkpoint: same weights as the last step, no training state
    assert not (stage_dir / "final" / ckpt.TRAINING_STATE).exists()
    a, b = _weights(stage_dir / "final"), _weights(stage_dir / "last")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "out" / "experiment.yaml").exists()


def test_training_state_loads_weights_only(tmp_path):
    cfg = toy_experiment(tmp_path)
    _run(cfg, tmp_path / "out")
    path = tmp_path / "out" / "s1" / "last" / ckpt.TRAINING_STATE
    state = torch.load(path, weights_only=True)
    assert state["step"] == 12
    assert set(state["rng"][0]) == {"python", "numpy", "torch", "cuda"}
    assert state["data"]["epoch"] == 1 and state["data"]["batch_in_epoch"] == 6
    assert state["optimizer"]["state"], "optimizer moments are saved"


@pytest.mark.parametrize("stop_at", [7, 10])
def test_interrupted_run_resumes_to_the_same_loss_curve(tmp_path, stop_at):
    cfg = toy_experiment(tmp_path)
    _run(cfg, tmp_path / "straight")

    def hook(step):
        if step == stop_at:
            raise Interrupt

    with pytest.raises(Interrupt):
        _run(cfg, tmp_path / "resumed", step_hook=hook)
    assert not (tmp_path / "resumed" / "s1" / "final").exists()
    res = _run(cfg, tmp_path / "resumed")
    assert res.stages[0].resumed_from_step == (5 if stop_at == 7 else 10)

    straight = _losses(tmp_path / "straight" / "s1" / "metrics.jsonl")
    resumed = _losses(tmp_path / "resumed" / "s1" / "metrics.jsonl")
    # steps logged after the last checkpoint by the interrupted run are dropped, not duplicated
    assert [s for s, _ in resumed] == [s for s, _ in straight] == list(range(1, 13))
    for (_, a), (_, b) in zip(straight, resumed):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-7)
    wa, wb = _weights(tmp_path / "straight" / "s1" / "final"), _weights(tmp_path / "resumed" / "s1" / "final")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_without_restored_rng_the_curve_differs(tmp_path, monkeypatch):
    """Guards the test above: resume is exact because of the saved state, not by accident."""
    cfg = toy_experiment(tmp_path)
    _run(cfg, tmp_path / "straight")

    def hook(step):
        if step == 7:
            raise Interrupt

    with pytest.raises(Interrupt):
        _run(cfg, tmp_path / "resumed", step_hook=hook)
    monkeypatch.setattr(ckpt, "restore_rng", lambda state: torch.manual_seed(12345))
    _run(cfg, tmp_path / "resumed")
    straight = dict(_losses(tmp_path / "straight" / "s1" / "metrics.jsonl"))
    resumed = dict(_losses(tmp_path / "resumed" / "s1" / "metrics.jsonl"))
    assert all(straight[s] == resumed[s] for s in range(1, 6))
    assert any(abs(straight[s] - resumed[s]) > 1e-6 for s in range(6, 13))


def test_finished_stage_is_skipped_and_no_resume_starts_over(tmp_path):
    cfg = toy_experiment(tmp_path)
    done = _run(cfg, tmp_path / "out")
    again = _run(cfg, tmp_path / "out")
    assert again.stages[0].skipped and again.stages[0].steps == 12
    # a skipped stage reports the training time of the run that did its work
    assert done.stages[0].wall_s > 0 and again.stages[0].wall_s == pytest.approx(done.stages[0].wall_s, abs=1e-3)
    first = _weights(tmp_path / "out" / "s1" / "final")
    fresh = _run(cfg, tmp_path / "out", resume=False)
    assert not fresh.stages[0].skipped and fresh.stages[0].resumed_from_step is None
    assert len(_losses(tmp_path / "out" / "s1" / "metrics.jsonl")) == 12
    # the earlier run is moved aside whole, never deleted
    (aside,) = tmp_path.glob("out.replaced-*")
    assert (aside / "s1" / "last").is_symlink() and (aside / "experiment.yaml").is_file()
    kept = _weights(aside / "s1" / "final")
    assert all(torch.equal(first[k], kept[k]) for k in first)
    assert len(_losses(aside / "s1" / "metrics.jsonl")) == 12


def test_no_resume_of_one_stage_moves_only_that_stage_aside(tmp_path):
    cfg = toy_experiment(
        tmp_path,
        stages=[
            {"name": "first", "trainable": ["encoder", "mask_decoder"], "max_steps": 3},
            {"name": "second", "init": "previous", "trainable": ["llm"], "max_steps": 2},
        ],
    )
    factory = toy_factory(pretrained=("projector", "llm", "obj_proj"))
    _run(cfg, tmp_path / "out", factory=factory)
    res = train(cfg, out_dir=tmp_path / "out", model_factory=factory, opener=ToyOpener(), resume=False,
                only_stage="second")
    assert not res.stages[0].skipped and res.stages[0].resumed_from_step is None
    (aside,) = (tmp_path / "out").glob("second.replaced-*")
    assert (aside / "final" / ckpt.MODEL_WEIGHTS).is_file() and (aside / "experiment.yaml").is_file()
    assert (tmp_path / "out" / "first" / "final" / ckpt.MODEL_WEIGHTS).is_file()  # the other stage is untouched
    assert not list(tmp_path.glob("out.replaced-*"))


def test_only_trainable_prefixes_change_and_lr_groups_apply(tmp_path):
    cfg = toy_experiment(
        tmp_path,
        stages=[{"name": "s1", "trainable": ["llm", "mask_decoder"], "lr": {"mask_decoder": 0.0}, "max_steps": 4}],
    )
    init = {}

    def factory(model_cfg):
        m = ToyModel(pretrained=("encoder", "projector", "obj_proj"))
        init.update({k: v.clone() for k, v in m.state_dict().items()})
        return m

    _run(cfg, tmp_path / "out", factory=factory)
    final = _weights(tmp_path / "out" / "s1" / "final")
    for k, v in final.items():
        changed = not torch.equal(v, init[k])
        assert changed == k.startswith("llm."), k  # mask_decoder trains at lr 0: unchanged


def test_param_groups_longest_prefix_and_no_decay_for_vectors():
    from psg4d.train.stages import StageConfig

    model = ToyModel()
    set_trainable(model, ["encoder", "llm", "mask_decoder"])
    stage = StageConfig(name="s", max_steps=1, lr={"llm": 1e-3, "llm.2": 5e-4})
    groups = param_groups(model, stage, TrainConfig(lr=1e-2, weight_decay=0.1))
    by = {(g["name"], g["weight_decay"]): (g["lr"], len(g["params"])) for g in groups}
    assert by[("llm.2", 0.1)] == (5e-4, 1) and by[("llm.2", 0.0)] == (5e-4, 1)
    assert by[("default", 0.1)] == (1e-2, 2)  # encoder + mask_decoder weights
    assert ("llm", 0.1) not in by  # llm.2 is the only llm layer with parameters
    with pytest.raises(ConfigError, match="match no trainable parameter"):
        param_groups(model, StageConfig(name="s", max_steps=1, lr={"projector": 1e-3}), TrainConfig())
    with pytest.raises(ConfigError, match="matches no parameter"):
        set_trainable(ToyModel(), ["estimators"])


def test_scheduler_warmup_then_cosine_to_floor():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, TrainConfig(lr=1.0, warmup_steps=4, min_lr_ratio=0.1), total_steps=14)
    lrs = []
    for _ in range(14):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[9] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.9)))
    with pytest.raises(ConfigError, match="unknown 'step'"):
        build_scheduler(opt, TrainConfig(scheduler="step"), 10)


def test_grad_accumulation_matches_a_larger_batch(tmp_path):
    common = dict(stages=[{"name": "s1", "trainable": ["encoder", "llm"], "max_steps": 3}])
    big = toy_experiment(tmp_path, train__batch_size=4, **common)
    acc = toy_experiment(tmp_path, train__batch_size=2, train__grad_accum=2, **common)
    frozen = ("projector", "obj_proj", "mask_decoder")
    _run(big, tmp_path / "big", factory=toy_factory(dropout=0.0, pretrained=frozen))
    _run(acc, tmp_path / "acc", factory=toy_factory(dropout=0.0, pretrained=frozen))
    a, b = _weights(tmp_path / "big" / "s1" / "final"), _weights(tmp_path / "acc" / "s1" / "final")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    la, lb = _losses(tmp_path / "big" / "s1" / "metrics.jsonl"), _losses(tmp_path / "acc" / "s1" / "metrics.jsonl")
    assert [x for _, x in la] == pytest.approx([x for _, x in lb], rel=1e-5)


def test_validator_is_called_periodically_and_logged(tmp_path):
    calls = []

    def validator(model, *, stage, step):
        assert not model.training
        calls.append(step)
        return {"score": float(step)}

    cfg = toy_experiment(tmp_path, train__val_every=5)
    res = _run(cfg, tmp_path / "out", validator=validator)
    assert calls == [5, 10, 12]
    assert res.stages[0].val == {"score": 12.0}
    vals = [r for r in read_metrics(tmp_path / "out" / "s1" / "metrics.jsonl") if "val" in r]
    assert [(r["step"], r["val"]["score"]) for r in vals] == [(5, 5.0), (10, 10.0), (12, 12.0)]


def test_default_validator_reports_val_loss(tmp_path):
    cfg = toy_experiment(tmp_path, train__val_max_videos=2)
    res = _run(cfg, tmp_path / "out")
    assert set(res.stages[0].val) == {"val_loss"} and res.stages[0].val["val_loss"] > 0


def test_two_stages_chain_through_previous(tmp_path):
    cfg = toy_experiment(
        tmp_path,
        stages=[
            {"name": "first", "trainable": ["encoder", "mask_decoder"], "max_steps": 3},
            {"name": "second", "init": "previous", "trainable": ["llm"], "max_steps": 2,
             "data": [{"path": "b", "weight": 1.0}]},
        ],
    )
    res = _run(cfg, tmp_path / "out", factory=toy_factory(pretrained=("projector", "llm", "obj_proj")))
    assert [s.name for s in res.stages] == ["first", "second"]
    a, b = _weights(tmp_path / "out" / "first" / "final"), _weights(tmp_path / "out" / "second" / "final")
    assert torch.equal(a["encoder.weight"], b["encoder.weight"])  # carried over, frozen in stage 2
    assert not torch.equal(a["llm.2.weight"], b["llm.2.weight"])
    assert (tmp_path / "out" / "final").resolve() == (tmp_path / "out" / "second" / "final").resolve()


def test_init_checkpoint_errors_are_clear(tmp_path):
    cfg = toy_experiment(tmp_path, stages=[{"name": "s1", "init": str(tmp_path / "nope"), "max_steps": 2}])
    with pytest.raises(CheckpointError, match="init checkpoint .*nope not found"):
        _run(cfg, tmp_path / "out")
    # weights of another model: names the mismatching keys
    other = tmp_path / "other"
    from safetensors.torch import save_file

    other.mkdir()
    save_file({"something.weight": torch.zeros(2)}, str(other / "model.safetensors"))
    cfg = toy_experiment(tmp_path, stages=[{"name": "s1", "init": str(other), "max_steps": 2}])
    with pytest.raises(CheckpointError, match="missing .*unexpected \\['something.weight'\\]"):
        _run(cfg, tmp_path / "out")


def test_missing_data_path_names_the_path(tmp_path):
    cfg = toy_experiment(tmp_path, data__train=[{"path": "not_there"}])
    with pytest.raises(ConfigError, match="not_there does not exist"):
        _run(cfg, tmp_path / "out")


def test_frozen_submodules_stay_in_eval_mode():
    from psg4d.train.loop import train_mode

    net = torch.nn.Sequential(torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2), torch.nn.Dropout(0.5))
    for p in net[0].parameters():
        p.requires_grad_(False)
    train_mode(net)
    assert not net[0].training and net[1].training and net[2].training
    before = net[0].running_mean.clone()
    net(torch.randn(8, 3) + 5)
    assert torch.equal(net[0].running_mean, before)  # a frozen backbone keeps its statistics


def test_a_failing_final_validation_keeps_the_training(tmp_path):
    """The last step's checkpoint is written before the final validation; a rerun only validates."""
    cfg = toy_experiment(tmp_path)

    def broken(model, *, stage, step):
        raise RuntimeError("validator bug")

    with pytest.raises(RuntimeError, match="validator bug"):
        _run(cfg, tmp_path / "out", validator=broken)
    stage_dir = tmp_path / "out" / "s1"
    assert os.readlink(stage_dir / "last") == "step_00000012" and not (stage_dir / "final").exists()
    calls = []

    def working(model, *, stage, step):
        calls.append(step)
        return {"val_loss": 1.0}

    res = _run(cfg, tmp_path / "out", validator=working)
    assert res.stages[0].steps == 12 and calls == [12]
    assert len(_losses(stage_dir / "metrics.jsonl")) == 12  # no step trained twice
    a, b = _weights(stage_dir / "final"), _weights(stage_dir / "last")
    assert all(torch.equal(a[k], b[k]) for k in a)


class _WiderReader(ToyReader):
    """A dataset with one more object category and one more predicate than the toy's (in every
    graph), and a declared category ("lamp") that none of its graphs holds."""

    @property
    def object_vocab(self) -> list[str]:
        return [*super().object_vocab, "sofa", "lamp"]

    @property
    def predicate_vocab(self) -> list[str]:
        return [*super().predicate_vocab, "sitting on"]

    def read_graph(self, video_id: str, *, with_masks: bool = True) -> SceneGraph4D:
        g = super().read_graph(video_id, with_masks=with_masks)
        g.objects.append(ObjectTrack(object_id=3, category="sofa", tube=MaskTube.empty(4, 8, 8) if with_masks else None))
        g.relations.append(Relation(subject_id=0, object_id=3, predicate="sitting on", spans=[(0, 3)]))
        return g


def test_vocabularies_come_from_the_training_data_only(tmp_path):
    def opener(path, fmt):
        return (_WiderReader if path.name == "b" else ToyReader)(path)

    val_only = toy_experiment(tmp_path, data__val=[{"path": "b", "split": "val"}])
    model = with_data_vocab(val_only, opener).model
    assert model.object_vocab == ["person", "cup", "table"] and model.predicate_vocab == PREDICATES
    # a stage's own training mix counts
    trained = toy_experiment(tmp_path, stages=[{"name": "s1", "max_steps": 1, "data": [{"path": "a"}, {"path": "b"}]}])
    model = with_data_vocab(trained, opener).model
    # what its training graphs hold, not everything it declares ("lamp" is in none)
    assert model.object_vocab == ["person", "cup", "table", "sofa"]
    assert model.predicate_vocab[-1] == "sitting on" and set(model.predicate_vocab) <= {*PREDICATES, "sitting on"}


def test_resuming_into_a_folder_of_another_model_is_refused(tmp_path):
    _run(toy_experiment(tmp_path), tmp_path / "out")
    other = toy_experiment(tmp_path, model={"max_new_tokens": 99})
    with pytest.raises(CheckpointError, match=r"different model \(model.max_new_tokens: 256 -> 99\).*--no-resume"):
        _run(other, tmp_path / "out")
    # the finished model is untouched and --no-resume starts the folder over with the new config
    assert (tmp_path / "out" / "s1" / "final" / ckpt.MODEL_WEIGHTS).exists()
    fresh = _run(other, tmp_path / "out", resume=False)
    assert not fresh.stages[0].skipped
    (aside,) = tmp_path.glob("out.replaced-*")  # the other model is kept beside it, config and all
    assert "max_new_tokens: 256" in (aside / "experiment.yaml").read_text()
    # a longer schedule is not a different model: it continues
    longer = toy_experiment(tmp_path, model={"max_new_tokens": 99}, train__lr=1e-3)
    assert _run(longer, tmp_path / "out").stages[0].skipped


def test_checkpoint_with_a_nan_tensor_is_refused_at_load(tmp_path):
    from safetensors.torch import load_file, save_file

    cfg = toy_experiment(tmp_path)
    res = _run(cfg, tmp_path / "out")
    final = res.stages[0].final_dir
    state = load_file(str(final / ckpt.MODEL_WEIGHTS))
    name = sorted(k for k, v in state.items() if v.is_floating_point())[0]
    state[name][...] = float("nan")
    save_file(state, str(final / ckpt.MODEL_WEIGHTS))
    _rerecord_sha256(final)  # NaN saved as such (a diverged run), not damage the hash would catch first
    with pytest.raises(CheckpointError, match=rf"model.safetensors: tensor '{name}' holds NaN"):
        ckpt.load_model_weights(toy_factory()(cfg.model), final)


def test_training_checkpoints_record_and_check_a_weights_sha256(tmp_path):
    torch.manual_seed(0)
    model = ToyModel(hidden=256)  # ~0.8 MB of weights: room for 64 KiB of damage in the middle
    ckpt.save_checkpoint(tmp_path / "ck", model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                         scheduler=None, step=3, rng=ckpt.capture_rng())
    weights = tmp_path / "ck" / ckpt.MODEL_WEIGHTS
    meta = json.loads((tmp_path / "ck" / ckpt.TRAINER_META).read_text())
    assert meta[WEIGHTS_SHA256] == file_sha256(weights) and meta["step"] == 3
    again = ToyModel(hidden=256)
    ckpt.load_model_weights(again, tmp_path / "ck")  # intact: loads, the same weights
    for k, v in again.state_dict().items():
        torch.testing.assert_close(v, model.state_dict()[k])
    shutil.copytree(tmp_path / "ck", tmp_path / "old")

    flip_middle_bytes(weights)
    assert_still_readable(weights)
    with pytest.raises(CheckpointError) as err:
        ckpt.load_model_weights(ToyModel(hidden=256), tmp_path / "ck")
    msg = str(err.value)
    assert msg.startswith(f"{weights}: ") and "sha256 hash differs" in msg and "trainer.json" in msg, msg
    assert "\n" not in msg

    # a checkpoint written before the hash was recorded loads as before, unverified
    old = tmp_path / "old"
    meta = json.loads((old / ckpt.TRAINER_META).read_text())
    del meta[WEIGHTS_SHA256]
    (old / ckpt.TRAINER_META).write_text(json.dumps(meta))
    again = ToyModel(hidden=256)
    ckpt.load_model_weights(again, old)
    for k, v in again.state_dict().items():
        torch.testing.assert_close(v, model.state_dict()[k])


def test_an_init_of_other_model_sizes_is_one_line(tmp_path):
    ckpt.save_checkpoint(tmp_path / "ck", model=ToyModel(hidden=16), optimizer=None, scheduler=None, step=1, rng=None)
    with pytest.raises(CheckpointError) as err:
        ckpt.load_model_weights(ToyModel(hidden=32), tmp_path / "ck")
    msg = str(err.value)
    assert "\n" not in msg, msg
    # of the 10 tensors only mask_decoder.bias (one per predicate) keeps its shape
    assert re.fullmatch(
        rf"{re.escape(str(tmp_path / 'ck' / ckpt.MODEL_WEIGHTS))}: weights do not fit this model: 9 tensors differ"
        r" in shape \(e\.g\. encoder\.weight \[16, 6\] in the file vs \[32, 6\] here\);"
        r" was it trained with other model sizes\?", msg), msg


def test_a_malformed_trainer_record_is_one_line(tmp_path):
    """A finished stage whose trainer.json is damaged is refused by name, not with a traceback."""
    from psg4d.errors import CheckpointError
    from psg4d.engine.checkpoint import read_trainer_meta

    (tmp_path / "trainer.json").write_text('{"step": 3')
    with pytest.raises(CheckpointError, match="trainer.json: cannot read the checkpoint's trainer record"):
        read_trainer_meta(tmp_path)
    (tmp_path / "trainer.json").write_text("[3]")
    with pytest.raises(CheckpointError, match="not a trainer record"):
        read_trainer_meta(tmp_path)
    (tmp_path / "trainer.json").write_text('{"step": 3}')
    assert read_trainer_meta(tmp_path) == {"step": 3}
