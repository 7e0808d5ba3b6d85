"""The training loop: one readable loop shared by every stage kind.

``train(cfg)`` runs the experiment's stages in order. Per stage: build the
model (from the stage's init weights, or from its ``last`` checkpoint when
resuming), freeze everything outside the stage's trainable prefixes, check that
nothing frozen stays at its random initial values, build the optimizer with
per-prefix learning rates and a warmup + decay schedule, then loop: gradient
accumulation, autocast, gradient clipping, a ``metrics.jsonl`` record per
``log_every`` steps, periodic validation and checkpoints, and a final
checkpoint. Under torchrun (``WORLD_SIZE>1``) the model is wrapped in DDP or
FSDP and only rank 0 writes files.

The model contract: ``forward(**batch) -> dict`` with a scalar ``loss`` (other
scalar entries are logged as loss parts), ``collate(list[Sample]) -> batch``,
``save_pretrained(dir)`` and ``from_pretrained(dir)``. Optionally
``pretrained_parameters() -> set[str]``: the parameter names (as in
``named_parameters()``) whose values were loaded from pretrained weight files
when the model was built (a model without it has none), and
``unused_parameters() -> set[str]``: parameters that never take part in
``forward``, kept only so pretrained checkpoints load strictly.

A stage may freeze a parameter only if it is pretrained, unused, or loaded from
the stage's init checkpoint (``init: previous`` or a folder; a kind's
``new_modules`` missing from it are not initialised); anything else would stay
random, and the stage is refused with a ConfigError naming those parameters by
module. A resumed stage is judged as if it were starting, against its init
checkpoint: a frozen random parameter saved in ``last`` is still random.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from psg4d.config import save_yaml, to_dict
from psg4d.engine import checkpoint as ckpt
from psg4d.engine import distributed as dist_utils
from psg4d.engine import stage_dir
from psg4d.engine.distributed import DistInfo
from psg4d.engine.fit import Fit, LoopSettings, Start, StepHook
from psg4d.engine.metrics import METRICS_FILE, MetricsLog
from psg4d.engine.optim import resolve_amp
from psg4d.engine.run_folder import check_run_folder
from psg4d.engine.runtime import seed_everything, to_device
from psg4d.errors import CheckpointError, ConfigError
from psg4d.train.data import DatasetOpener, MixtureSampler, build_mixture, with_data_vocab
from psg4d.train.params import (
    FrozenModules, build_optimizer, build_scheduler, check_frozen_initialised, set_trainable, top_level_modules,
)
from psg4d.train.stages import INIT_PREVIOUS, ExperimentConfig, StageConfig, check_local_weights, model_settings
from psg4d.train.validation import DefaultValidator, Validator
from psg4d.utils.io import check_writable_dir, start_over

log = logging.getLogger(__name__)

EXPERIMENT_FILE = "experiment.yaml"

ModelFactory = Callable[[Any], nn.Module]


@dataclass(kw_only=True)
class StageResult:
    name: str
    final_dir: Path
    steps: int
    final_loss: float | None
    resumed_from_step: int | None = None
    skipped: bool = False
    val: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0


@dataclass(kw_only=True)
class TrainResult:
    out_dir: Path
    stages: list[StageResult]

    @property
    def final_dir(self) -> Path:
        return self.stages[-1].final_dir


# --------------------------------------------------------------------------- helpers


def train_mode(model: nn.Module) -> nn.Module:
    """``model.train()``, except submodules whose parameters are all frozen stay in eval mode:
    a frozen pretrained backbone must keep its BatchNorm statistics and skip its dropout."""
    model.train()
    for module in model.modules():
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            module.eval()
    return model


def default_model_factory(model_cfg: Any) -> nn.Module:
    from psg4d.model.psg4d_llm import PSG4DModel

    return PSG4DModel.from_config(model_cfg)


# --------------------------------------------------------------------------- the loop


def train(
    cfg: ExperimentConfig,
    *,
    out_dir: str | Path | None = None,
    resume: bool = True,
    model_factory: ModelFactory | None = None,
    validator: Validator | None = None,
    opener: DatasetOpener | None = None,
    step_hook: StepHook | None = None,
    only_stage: str | None = None,
) -> TrainResult:
    """Run every stage of ``cfg`` (or only the one named ``only_stage``, whose ``init: previous``
    is the previous stage's finished ``final``); resume from ``last`` checkpoints when ``resume``.

    ``model_factory(model_config) -> nn.Module`` defaults to
    ``PSG4DModel.from_config``; ``validator`` defaults to val loss + R@K on
    ``data.val``; ``opener(path, format)`` defaults to ``open_dataset``.
    """
    names = [s.name for s in cfg.stages]
    if only_stage is not None and only_stage not in names:
        raise ConfigError(f"--stage {only_stage!r}: the experiment's stages are {', '.join(names)}")
    out = Path(out_dir or cfg.output_dir)
    info = dist_utils.init_distributed(cfg.train.device)
    try:
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        if model_factory is None:
            check_local_weights(cfg.model)
        cfg = with_data_vocab(cfg, opener)
        if resume:
            # every rank checks, so all of them stop on a conflict instead of waiting at a barrier
            check_run_folder(out / EXPERIMENT_FILE, yaml.safe_load(yaml.safe_dump(to_dict(cfg))), model_settings)
        else:
            if info.is_main:
                start_over(out, part=only_stage, describes=(EXPERIMENT_FILE,))
            dist_utils.barrier(info)  # no rank looks into `out` before the earlier run has moved
        if info.is_main:
            check_writable_dir(out)
            save_yaml(cfg, out / EXPERIMENT_FILE)
        results: list[StageResult] = []
        prev_final: Path | None = None
        for index, stage in enumerate(cfg.stages):
            if only_stage is not None and stage.name != only_stage:
                done = out / stage.name / ckpt.FINAL
                prev_final = done if (done / ckpt.MODEL_WEIGHTS).exists() else None
                continue
            runner = _StageRun(
                cfg=cfg,
                stage=stage,
                index=index,
                out=out,
                info=info,
                resume=resume,
                init_previous=prev_final,
                model_factory=model_factory or default_model_factory,
                validator=validator,
                opener=opener,
                step_hook=step_hook,
            )
            results.append(runner.run())
            prev_final = results[-1].final_dir
            del runner  # its DDP wrapper goes now, not after the process group (see distributed.shutdown)
        if info.is_main and (only_stage is None or only_stage == names[-1]):
            _link(out / ckpt.FINAL, results[-1].final_dir)
        dist_utils.barrier(info)
        return TrainResult(out_dir=out, stages=results)
    finally:
        dist_utils.shutdown(info)


def _link(link: Path, target: Path) -> None:
    """``link`` -> ``target`` as a relative symlink, swapped in atomically."""
    tmp = link.with_name(f".{link.name}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(target.relative_to(link.parent))
    tmp.replace(link)


class _StageRun:
    """State of one stage's run (kept on an object so the loop body reads top to bottom)."""

    def __init__(
        self,
        *,
        cfg: ExperimentConfig,
        stage: StageConfig,
        index: int,
        out: Path,
        info: DistInfo,
        resume: bool,
        init_previous: Path | None,
        model_factory: ModelFactory,
        validator: Validator | None,
        opener: DatasetOpener | None,
        step_hook: StepHook | None,
    ):
        self.cfg, self.stage, self.index, self.info = cfg, stage, index, info
        self.t = cfg.train
        self.dir = out / stage.name
        self.resume = resume
        self.init_previous = init_previous
        self.model_factory = model_factory
        self.validator = validator
        self.opener = opener
        self.step_hook = step_hook
        self.metrics = MetricsLog(self.dir / METRICS_FILE, enabled=info.is_main)

    def run(self) -> StageResult:
        total = self._build_data()
        finished = self._finished(total)
        if finished is not None:
            return finished
        return self._loop(total, *self._setup(total))

    # -- setup
    def _build_data(self) -> int:
        """The stage's data mix and sampler; returns the stage's length in optimizer steps."""
        stage, t = self.stage, self.t
        self.dataset = build_mixture(self.cfg.stage_data(stage), self.cfg.data, opener=self.opener)
        self.sampler = MixtureSampler(
            self.dataset, seed=self.cfg.seed + self.index, num_replicas=self.info.world_size, rank=self.info.rank
        )
        batches_per_epoch = -(-self.sampler.per_rank // t.batch_size)
        self.steps_per_epoch = max(1, batches_per_epoch // t.grad_accum)
        return stage.max_steps if stage.max_steps is not None else math.ceil(stage.epochs * self.steps_per_epoch)

    def _finished(self, total: int) -> StageResult | None:
        """The result of an earlier run that finished this stage, if any."""
        done = stage_dir.finished(self.dir, total) if self.resume else None
        if done is None:
            return None
        log.info("stage %s already finished (%s); skipping", self.stage.name, self.dir / ckpt.FINAL)
        return StageResult(
            name=self.stage.name, final_dir=self.dir / ckpt.FINAL, steps=int(done.get("step", 0)),
            final_loss=done.get("final_loss"), skipped=True, val=done.get("val", {}),
            wall_s=float(done.get("wall_s", 0.0)),
        )

    def _setup(self, total: int) -> tuple[Start, Validator | None]:
        """Model, optimizer and schedule, restored from `last` when resuming."""
        stage, info, t = self.stage, self.info, self.t
        last = ckpt.find_last(self.dir) if self.resume else None
        dist_utils.barrier(info)
        if info.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)

        model = self._build_model(last)
        self.wrapped = dist_utils.wrap_model(
            model, info, parallel=t.parallel, find_unused_parameters=t.find_unused_parameters
        )
        self.collate = model.collate
        self.amp = resolve_amp(t.amp, info.device)
        self.optimizer = build_optimizer(self.wrapped, stage, t)
        self.scheduler = build_scheduler(self.optimizer, t, total)
        self.scaler = torch.amp.GradScaler(info.device.type) if self.amp == torch.float16 else None

        step, self.epoch, self.batch_in_epoch, elapsed = 0, 0, 0, 0.0
        # Each rank draws its own dropout/sampling noise.
        seed_everything(self.cfg.seed + 1000 * self.index + 1 + info.rank)
        if last is not None:
            state = stage_dir.restore_resumable(last, wrapped=self.wrapped, optimizer=self.optimizer,
                                                scheduler=self.scheduler, info=info, scaler=self.scaler)
            progress = state["data"]
            self.epoch = int(progress.get("epoch", 0))
            self.batch_in_epoch = int(progress.get("batch_in_epoch", 0))
            step, elapsed = int(state["step"]), float(progress.get("elapsed_s", 0.0))
            log.info("stage %s: resuming from %s at step %d of %d", stage.name, last, step, total)
        resumed_from = step if last is not None else None
        kept = self.metrics.reset(resumed_from)
        val_fn = self.validator or self._default_validator()
        log.info(
            "stage %s: %d steps, %d videos, batch %d x accum %d x %d ranks, %d steps per epoch",
            stage.name, total, len(self.dataset), t.batch_size, t.grad_accum, info.world_size, self.steps_per_epoch,
        )
        start = Start(step=step, elapsed_s=elapsed, resumed_from=resumed_from,
                      last_loss=next((r["loss"] for r in reversed(kept) if "loss" in r), None))
        return start, val_fn

    def _init_dir(self) -> Path | None:
        init = self.stage.init
        if init is None:
            return None
        path = self.init_previous if init == INIT_PREVIOUS else Path(init).expanduser()
        if path is None:
            previous = self.cfg.stages[self.index - 1].name
            raise CheckpointError(
                f"stage {self.stage.name!r} starts from the final weights of stage {previous!r}, which has not"
                f" finished in {self.dir.parent}: run it first (psg4d train ... --stage {previous})"
            )
        if not (path / ckpt.MODEL_WEIGHTS).exists():
            raise CheckpointError(
                f"stage {self.stage.name!r}: init checkpoint {path} not found (expected {ckpt.MODEL_WEIGHTS} in it)"
            )
        return path

    def _build_model(self, last: Path | None) -> nn.Module:
        # Same init on every rank (DDP also broadcasts rank 0's weights; FSDP does not).
        seed_everything(self.cfg.seed + 1000 * self.index)
        model = self.model_factory(self.cfg.model_config_for(self.stage))
        for attr in ("collate", "save_pretrained", "forward"):
            if not callable(getattr(model, attr, None)):
                raise ConfigError(f"model {type(model).__name__} lacks {attr}(); see psg4d.train.loop's model contract")
        # Resolved even when resuming: the frozen-parameter check judges the stage by its init.
        init = self._init_dir()
        if last is not None:
            ckpt.load_model_weights(model, last)
        elif init is not None:
            ckpt.load_model_weights(model, init, allow_missing=self.stage.kind_spec.new_modules)
            log.info("stage %s: initial weights from %s", self.stage.name, init)
        prefixes = self.stage.trainable_prefixes(top_level_modules(model))
        n_train, n_total = set_trainable(model, prefixes)
        log.info(
            "stage %s (%s): %s of %s parameters train (%s)",
            self.stage.name, self.stage.kind, f"{n_train:,}", f"{n_total:,}", ", ".join(prefixes),
        )
        frozen = check_frozen_initialised(
            model, stage_name=self.stage.name, init_names=ckpt.stored_weight_names(init) if init is not None else ()
        )
        self._log_frozen(frozen, init)
        return model.to(self.info.device)

    def _log_frozen(self, frozen: FrozenModules, init: Path | None) -> None:
        reasons = {"pretrained": frozen.pretrained, f"from {init}": frozen.from_init, "unused": frozen.unused}
        described = "; ".join(f"{why}: {', '.join(modules)}" for why, modules in reasons.items() if modules)
        if described:
            log.info("stage %s: frozen modules, %s", self.stage.name, described)

    # -- the loop
    def _loop(self, total: int, start: Start, val_fn: Validator | None) -> StageResult:
        t = self.t
        settings = LoopSettings(
            total=total, grad_accum=t.grad_accum, max_grad_norm=t.max_grad_norm, log_every=t.log_every,
            save_every=t.save_every, val_every=t.val_every, num_threads=t.num_threads,
            adapt_threads_every=t.adapt_threads_every, progress=t.progress,
        )
        fit = Fit(
            name=self.stage.name, wrapped=self.wrapped, optimizer=self.optimizer, scheduler=self.scheduler,
            info=self.info, settings=settings, metrics=self.metrics, amp=self.amp, scaler=self.scaler,
            record_extra=lambda: {"epoch": self.epoch}, step_hook=self.step_hook,
        )
        batches = self._batches()
        train_mode(self.wrapped)
        has_val = self.validator is not None or bool(self.cfg.data.val)
        done = fit.run(
            start, lambda: self.wrapped(**to_device(next(batches), self.info.device)), save=self._save,
            validate=(lambda step: self._validate(val_fn, step)) if has_val else None,
        )
        final = self._save_final(done.step, done.last_loss, done.val, done.wall_s)
        return StageResult(
            name=self.stage.name, final_dir=final, steps=done.step, final_loss=done.last_loss,
            resumed_from_step=start.resumed_from, val=done.val, wall_s=done.wall_s,
        )

    def _batches(self) -> Iterator[Any]:
        """Batches forever, epoch after epoch, starting at the restored position."""
        t = self.t
        while True:
            self.sampler.set_epoch(self.epoch)
            self.sampler.set_start(self.batch_in_epoch * t.batch_size)
            # A loader-owned generator: otherwise each new iterator draws its worker
            # base seed from the global RNG, and a resumed run would drift from a straight one.
            gen = torch.Generator().manual_seed(self.cfg.seed * 7919 + self.epoch)
            loader = DataLoader(
                self.dataset, batch_size=t.batch_size, sampler=self.sampler, collate_fn=self.collate,
                num_workers=self.cfg.data.num_workers, generator=gen,
                persistent_workers=False, pin_memory=self.info.device.type == "cuda",
            )
            for batch in loader:
                self.batch_in_epoch += 1
                yield batch
            self.epoch += 1
            self.batch_in_epoch = 0

    # -- validation
    def _default_validator(self) -> Validator | None:
        if not self.cfg.data.val:
            return None
        if self.t.val_recall and importlib.util.find_spec("psg4d.infer.predictor") is None:
            raise ConfigError(
                "train.val_recall=true needs psg4d.infer.predictor (R@K of predicted scene graphs);"
                " set train.val_recall=false to validate with the val loss only"
            )
        dataset = build_mixture(self.cfg.data.val, self.cfg.data, opener=self.opener, max_videos=self.t.val_max_videos)
        return DefaultValidator(
            dataset=dataset, device=self.info.device, amp=self.amp, batch_size=self.t.batch_size,
            recall=self.t.val_recall, protocol=self.t.val_protocol, info=self.info,
        )

    def _validate(self, val_fn: Validator | None, step: int) -> dict[str, float]:
        metrics: dict[str, float] = {}
        # Collective under FSDP (all ranks gather the full weights). Every rank validates: a
        # validator's collectives (the default one reduces its ranks' shares) need them all.
        with dist_utils.full_params(self.wrapped) as model:
            if val_fn is not None:
                model.eval()
                try:
                    metrics = dict(val_fn(model, stage=self.stage, step=step))
                finally:
                    train_mode(model)
        dist_utils.barrier(self.info)
        if self.info.is_main:
            self.metrics.write({"stage": self.stage.name, "step": step, "val": metrics})
            log.info(
                "stage %s step %d validation: %s",
                self.stage.name, step, ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())),
            )
        return metrics

    # -- checkpoints
    def _save(self, step: int, elapsed: float) -> None:
        stage_dir.save_resumable(
            self.dir, name=self.stage.name, wrapped=self.wrapped, write_model=_save_pretrained,
            optimizer=self.optimizer, scheduler=self.scheduler, step=step, info=self.info, keep_last=self.t.keep_last,
            scaler=self.scaler, meta={"stage": self.stage.name, "kind": self.stage.kind},
            data_position={"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "elapsed_s": float(elapsed),
                           "world_size": self.info.world_size},
        )

    def _save_final(self, step: int, loss: float | None, val: dict[str, float], wall: float) -> Path:
        final = stage_dir.save_final(
            self.dir, wrapped=self.wrapped, write_model=_save_pretrained, step=step, info=self.info,
            meta={"stage": self.stage.name, "kind": self.stage.kind, "final_loss": loss, "val": val,
                  "wall_s": round(wall, 3)},
        )
        if self.info.is_main:
            log.info("stage %s finished: %d steps, loss %s, final model in %s", self.stage.name, step,
                     f"{loss:.4f}" if loss is not None else "n/a", final)
        return final


def _save_pretrained(model: nn.Module, folder: Path) -> None:
    model.save_pretrained(folder)
