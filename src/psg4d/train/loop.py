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

import contextlib
import dataclasses
import importlib.util
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from psg4d.config import save_yaml, to_dict
from psg4d.errors import CheckpointError, ConfigError
from psg4d.train import checkpoint as ckpt
from psg4d.train import distributed as dist_utils
from psg4d.train.data import DatasetOpener, MixtureSampler, build_mixture, collect_vocab
from psg4d.train.distributed import DistInfo

# read_metrics and param_groups are not used here: callers import them from this module.
from psg4d.train.metrics_log import METRICS_FILE, MetricsLog, read_metrics  # noqa: F401
from psg4d.train.optim import build_optimizer, build_scheduler, param_groups, resolve_amp  # noqa: F401
from psg4d.train.params import FrozenModules, check_frozen_initialised, set_trainable, top_level_modules
from psg4d.train.stages import INIT_PREVIOUS, ExperimentConfig, StageConfig, check_local_weights
from psg4d.train.validation import DefaultValidator, Validator, autocast, seed_everything, to_device
from psg4d.utils.io import check_writable_dir, start_over
from psg4d.utils.threads import AdaptiveThreads

log = logging.getLogger(__name__)

EXPERIMENT_FILE = "experiment.yaml"

ModelFactory = Callable[[Any], nn.Module]


# Called after every optimizer step (after any checkpoint of that step); tests use
# it to interrupt a run at a chosen step.
StepHook = Callable[[int], None]


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


def _scalar_parts(out: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v.detach().float().item())
        for k, v in out.items()
        if k != "loss" and isinstance(v, torch.Tensor) and v.numel() == 1
    }


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
            ckpt.check_resume_config(out / EXPERIMENT_FILE, yaml.safe_load(yaml.safe_dump(to_dict(cfg))))
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


def with_data_vocab(cfg: ExperimentConfig, opener: DatasetOpener | None = None) -> ExperimentConfig:
    """Fill a model config's empty ``object_vocab`` / ``predicate_vocab`` from the data.

    They seed the tiny tokenizer and the grammar, so they are fixed once for the
    whole experiment (all stages' training sources) and every stage builds the
    same tokenizer; set them in the config to pin them. The val sources never
    contribute: a category only validation holds must not enter the model.
    """
    model = cfg.model
    wanted = [a for a in ("object_vocab", "predicate_vocab") if hasattr(model, a) and not getattr(model, a)]
    if getattr(model, "chain_prob", 0) > 0 and not model.category_descriptions:
        wanted.append("category_descriptions")
    if not wanted:
        return cfg
    sources = [s for stage in cfg.stages for s in cfg.stage_data(stage)]
    objects, predicates, descriptions = collect_vocab(sources, cfg.data, opener=opener)
    found = {"object_vocab": objects, "predicate_vocab": predicates, "category_descriptions": descriptions}
    log.info("vocabularies from the data: %d object and %d predicate categories", len(objects), len(predicates))
    return dataclasses.replace(cfg, model=dataclasses.replace(model, **{a: found[a] for a in wanted}))


def _link(link: Path, target: Path) -> None:
    """``link`` -> ``target`` as a relative symlink, swapped in atomically."""
    tmp = link.with_name(f".{link.name}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(target.relative_to(link.parent))
    tmp.replace(link)


@dataclass(kw_only=True)
class _Start:
    """Where a stage's loop starts: what ``_StageRun._setup`` hands to ``_StageRun._loop``."""

    total: int
    step: int
    elapsed_s: float
    # The step of the `last` checkpoint the stage resumed from (None: a fresh start).
    resumed_from: int | None
    last_loss: float | None
    val_fn: Validator | None


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
        return self._loop(self._setup(total))

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
        final = self.dir / ckpt.FINAL
        if not (self.resume and (final / ckpt.TRAINER_META).exists() and (final / ckpt.MODEL_WEIGHTS).exists()):
            return None
        done = ckpt.read_trainer_meta(final)
        # A longer schedule than the finished one (raised max_steps) continues from `last`.
        if int(done.get("step", 0)) < total:
            return None
        log.info("stage %s already finished (%s); skipping", self.stage.name, final)
        return StageResult(
            name=self.stage.name, final_dir=final, steps=int(done.get("step", 0)),
            final_loss=done.get("final_loss"), skipped=True, val=done.get("val", {}),
        )

    def _setup(self, total: int) -> _Start:
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
            step, elapsed = self._restore(last)
            log.info("stage %s: resuming from %s at step %d of %d", stage.name, last, step, total)
        resumed_from = step if last is not None else None
        kept = self.metrics.reset(resumed_from)
        val_fn = self.validator or self._default_validator()
        log.info(
            "stage %s: %d steps, %d videos, batch %d x accum %d x %d ranks, %d steps per epoch",
            stage.name, total, len(self.dataset), t.batch_size, t.grad_accum, info.world_size, self.steps_per_epoch,
        )
        return _Start(
            total=total, step=step, elapsed_s=elapsed, resumed_from=resumed_from,
            last_loss=next((r["loss"] for r in reversed(kept) if "loss" in r), None), val_fn=val_fn,
        )

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
    def _loop(self, start: _Start) -> StageResult:
        """Steps ``start.step + 1 .. start.total`` with logging, validation and checkpoints on their
        cadences; then the last step's checkpoint, the final validation and ``final``."""
        t, total, step = self.t, start.total, start.step
        bar = tqdm(
            total=total, initial=step, desc=self.stage.name, disable=not (self.info.is_main and t.progress),
            dynamic_ncols=True, mininterval=1.0,
        )
        batches = self._batches()
        start_time = time.monotonic()
        window: list[float] = []
        window_parts: dict[str, list[float]] = defaultdict(list)
        last_loss = start.last_loss
        train_mode(self.wrapped)
        threads = AdaptiveThreads(max_threads=t.num_threads) if t.adapt_threads_every > 0 else None
        if threads is not None and step == 0:
            log.info("stage %s: train.adapt_threads_every=%d follows the machine's load; float sums then depend"
                     " on it, so a resumed run is not bit-identical to an uninterrupted one (0: a fixed count)",
                     self.stage.name, t.adapt_threads_every)
        while step < total:
            if threads is not None and step % t.adapt_threads_every == 0:
                threads()
            lr = max(self.scheduler.get_last_lr())  # the rate this step uses
            loss, parts, grad_norm = self._train_step(batches)
            step += 1
            window.append(loss)
            for k, v in parts.items():
                window_parts[k].append(v)
            if step % t.log_every == 0 or step == total:
                now = time.monotonic() - start_time
                last_loss = self._log_train(
                    step=step, total=total, window=window, parts=window_parts, lr=lr, grad_norm=grad_norm,
                    time_s=start.elapsed_s + now, steps_per_s=(step - start.step) / max(now, 1e-9),
                    bar_shown=not bar.disable,
                )
                window.clear()
                window_parts.clear()
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
            bar.update(1)
            if t.val_every and step % t.val_every == 0 and step < total:
                self._validate(start.val_fn, step)
            if t.save_every and step % t.save_every == 0 and step < total:
                self._save(step, start.elapsed_s + time.monotonic() - start_time)
            if self.step_hook is not None:
                self.step_hook(step)
        bar.close()
        wall = start.elapsed_s + time.monotonic() - start_time
        # resumable checkpoint first: a failure in the final validation must not lose the training
        # (a rerun resumes at the last step, validates and writes `final`)
        if start.resumed_from is None or step > start.resumed_from:
            self._save(step, wall)
        val = self._validate(start.val_fn, step)
        final = self._save_final(step, last_loss, val, wall)
        return StageResult(
            name=self.stage.name, final_dir=final, steps=step, final_loss=last_loss,
            resumed_from_step=start.resumed_from, val=val, wall_s=wall,
        )

    def _log_train(
        self, *, step: int, total: int, window: list[float], parts: dict[str, list[float]], lr: float,
        grad_norm: float | None, time_s: float, steps_per_s: float, bar_shown: bool,
    ) -> float:
        """Write one metrics record (loss averaged over the window and the ranks); returns that loss."""
        mean_loss = dist_utils.mean_across_ranks(float(np.mean(window)), self.info)
        rec: dict[str, Any] = {
            "stage": self.stage.name, "step": step, "epoch": self.epoch, "loss": mean_loss, "lr": lr,
            "time_s": round(time_s, 3), "steps_per_s": round(steps_per_s, 4),
        }
        if grad_norm is not None:
            rec["grad_norm"] = grad_norm
        rec.update({k: float(np.mean(v)) for k, v in parts.items()})
        self.metrics.write(rec)
        if not bar_shown and self.info.is_main:
            log.info("stage %s step %d/%d loss %.4f lr %.2e", self.stage.name, step, total, mean_loss, lr)
        return mean_loss

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

    def _train_step(self, batches: Iterator[Any]) -> tuple[float, dict[str, float], float | None]:
        t, info = self.t, self.info
        total_loss = 0.0
        parts: dict[str, float] = defaultdict(float)
        for micro in range(t.grad_accum):
            batch = to_device(next(batches), info.device)
            # Gradients are all-reduced only on the last micro-batch of a step.
            sync = (
                self.wrapped.no_sync()
                if info.distributed and micro < t.grad_accum - 1 and hasattr(self.wrapped, "no_sync")
                else contextlib.nullcontext()
            )
            with sync:
                with autocast(info.device, self.amp):
                    out = self.wrapped(**batch)
                loss = out["loss"]
                if not torch.isfinite(loss.detach()).all():
                    raise FloatingPointError(
                        f"stage {self.stage.name!r}: loss is {loss.item()} at step {self.scheduler.last_epoch + 1}"
                        " (lower the learning rate or check the data)"
                    )
                scaled = loss / t.grad_accum
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            total_loss += float(loss.detach().float().item()) / t.grad_accum
            for k, v in _scalar_parts(out).items():
                parts[k] += v / t.grad_accum
        grad_norm = None
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if t.max_grad_norm:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            if dist_utils.is_fsdp(self.wrapped):
                norm = self.wrapped.clip_grad_norm_(t.max_grad_norm)
            else:
                norm = torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
            grad_norm = float(norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total_loss, dict(parts), grad_norm

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
        has_val = self.validator is not None or bool(self.cfg.data.val)
        if not has_val:
            return {}
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
    def _progress(self, elapsed: float) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "elapsed_s": float(elapsed),
                "world_size": self.info.world_size}

    def _optimizer_state(self) -> dict:
        if dist_utils.is_fsdp(self.wrapped):
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

            return FSDP.optim_state_dict(self.wrapped, self.optimizer)
        return self.optimizer.state_dict()

    def _save(self, step: int, elapsed: float) -> None:
        info = self.info
        rngs = dist_utils.gather_objects(ckpt.capture_rng(), info)
        optim_state = self._optimizer_state()
        with dist_utils.full_params(self.wrapped) as model:
            if info.is_main:
                target = self.dir / ckpt.step_dir_name(step)
                ckpt.save_checkpoint(
                    target, model=model, optimizer=optim_state, scheduler=self.scheduler, step=step, rng=rngs,
                    data_position=self._progress(elapsed), scaler=self.scaler,
                    meta={"stage": self.stage.name, "kind": self.stage.kind},
                )
                ckpt.point_last(self.dir, target)
                removed = ckpt.prune_checkpoints(self.dir, self.t.keep_last)
                log.info("stage %s: checkpoint %s%s", self.stage.name, target,
                         f" (removed {len(removed)} older)" if removed else "")
        dist_utils.barrier(info)

    def _save_final(self, step: int, loss: float | None, val: dict[str, float], wall: float) -> Path:
        final = self.dir / ckpt.FINAL
        with dist_utils.full_params(self.wrapped) as model:
            if self.info.is_main:
                ckpt.save_checkpoint(
                    final, model=model, optimizer=None, scheduler=None, step=step, rng=None,
                    meta={"stage": self.stage.name, "kind": self.stage.kind, "complete": True,
                          "final_loss": loss, "val": val, "wall_s": round(wall, 3)},
                )
                log.info("stage %s finished: %d steps, loss %s, final model in %s", self.stage.name, step,
                         f"{loss:.4f}" if loss is not None else "n/a", final)
        dist_utils.barrier(self.info)
        return final

    def _restore(self, last: Path) -> tuple[int, float]:
        state = ckpt.load_training_state(last)
        optim_state = state["optimizer"]
        if dist_utils.is_fsdp(self.wrapped):
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

            optim_state = FSDP.optim_state_dict_to_load(self.wrapped, self.optimizer, optim_state)
        try:
            self.optimizer.load_state_dict(optim_state)
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{last}: optimizer state does not fit this stage's parameters: {e}") from None
        if state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        progress = state["data"]
        self.epoch = int(progress.get("epoch", 0))
        self.batch_in_epoch = int(progress.get("batch_in_epoch", 0))
        rngs = state["rng"]
        if progress.get("world_size", 1) != self.info.world_size:
            log.warning(
                "resuming a %s-process run on %d processes: data order and noise will differ from an uninterrupted run",
                progress.get("world_size"), self.info.world_size,
            )
        if rngs:
            ckpt.restore_rng(rngs[self.info.rank] if self.info.rank < len(rngs) else rngs[0])
        return int(state["step"]), float(progress.get("elapsed_s", 0.0))
