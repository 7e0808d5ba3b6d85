"""The optimisation loop both model families train with.

:class:`Fit` runs steps ``start + 1 .. total`` of one stage: per step ``grad_accum`` micro-batches
(``forward()`` returns a dict with a scalar ``loss``; its other scalar entries are logged as loss
parts), autocast, gradients averaged over the ranks (by DDP/FSDP, or here for a module trained
unwrapped), the non-finite loss check, loss scaling (fp16), gradient clipping (FSDP's own
under FSDP), the optimizer and schedule steps; a ``metrics.jsonl`` record every ``log_every``
steps (loss averaged over the window and the ranks), tqdm, validation and resumable checkpoints
on their cadences through the callbacks it is given, and after the last step the resumable
checkpoint of that step (so a failure in the final validation loses no training) and the final
validation. What a family adds (its data, its checkpoint files, its stage table) stays with it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from psg4d.engine import distributed as dist_utils
from psg4d.engine.distributed import DistInfo
from psg4d.engine.metrics import MetricsLog
from psg4d.engine.runtime import autocast
from psg4d.utils.threads import AdaptiveThreads

log = logging.getLogger(__name__)

# One micro-batch's forward pass: {"loss": scalar tensor, other scalar loss parts...}.
Forward = Callable[[], dict[str, torch.Tensor]]
# Called after every optimizer step (after any checkpoint of that step); tests use it to
# interrupt a run at a chosen step.
StepHook = Callable[[int], None]


@dataclass(frozen=True, kw_only=True)
class LoopSettings:
    total: int
    grad_accum: int = 1
    # None or 0: no clipping.
    max_grad_norm: float | None = 1.0
    log_every: int = 1
    # 0: only the last step's checkpoint and validation.
    save_every: int = 0
    val_every: int = 0
    num_threads: int | None = None
    # >0: re-count every so many steps the CPUs other processes keep busy and train on the rest.
    # Float sums then follow the load: a resumed run is not bit-identical to an uninterrupted one.
    adapt_threads_every: int = 0
    progress: bool = True


@dataclass(kw_only=True)
class Start:
    """Where the loop starts: step 0, or the step of the checkpoint a stage resumed from."""

    step: int = 0
    elapsed_s: float = 0.0
    # The step of the `last` checkpoint resumed from (None: a fresh start).
    resumed_from: int | None = None
    # The loss of the last record a resumed run kept (reported if no step is left to run).
    last_loss: float | None = None


@dataclass(kw_only=True)
class Outcome:
    step: int
    wall_s: float
    last_loss: float | None
    val: dict[str, float] = field(default_factory=dict)


def scalar_parts(out: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v.detach().float().item())
        for k, v in out.items()
        if k != "loss" and isinstance(v, torch.Tensor) and v.numel() == 1
    }


class Fit:
    """One stage's loop over a (possibly DDP/FSDP-wrapped) module and its optimizer."""

    def __init__(
        self,
        *,
        name: str,
        wrapped: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        info: DistInfo,
        settings: LoopSettings,
        metrics: MetricsLog,
        amp: torch.dtype | None = None,
        scaler: torch.amp.GradScaler | None = None,
        record_extra: Callable[[], dict[str, Any]] | None = None,
        step_hook: StepHook | None = None,
    ):
        self.name, self.wrapped, self.optimizer, self.scheduler = name, wrapped, optimizer, scheduler
        self.info, self.s, self.metrics, self.amp, self.scaler = info, settings, metrics, amp, scaler
        self.record_extra = record_extra or dict
        self.step_hook = step_hook

    # -- one step
    def step(self, forward: Forward) -> tuple[float, dict[str, float], float | None]:
        """One optimizer step over ``grad_accum`` micro-batches: (mean loss, mean parts, grad norm)."""
        s, info = self.s, self.info
        total_loss = 0.0
        parts: dict[str, float] = defaultdict(float)
        for micro in range(s.grad_accum):
            # Gradients are all-reduced only on the last micro-batch of a step.
            sync = (
                self.wrapped.no_sync()
                if info.distributed and micro < s.grad_accum - 1 and hasattr(self.wrapped, "no_sync")
                else contextlib.nullcontext()
            )
            with sync:
                with autocast(info.device, self.amp):
                    out = forward()
                loss = out["loss"]
                if not torch.isfinite(loss.detach()).all():
                    raise FloatingPointError(
                        f"stage {self.name!r}: loss is {loss.item()} at step {self.scheduler.last_epoch + 1}"
                        " (lower the learning rate or check the data)"
                    )
                scaled = loss / s.grad_accum
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            total_loss += float(loss.detach().float().item()) / s.grad_accum
            for k, v in scalar_parts(out).items():
                parts[k] += v / s.grad_accum
        grad_norm = None
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if info.distributed and not dist_utils.is_wrapped(self.wrapped):
            dist_utils.average_gradients(params, info)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if s.max_grad_norm:
            if dist_utils.is_fsdp(self.wrapped):
                norm = self.wrapped.clip_grad_norm_(s.max_grad_norm)
            else:
                norm = torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)
            grad_norm = float(norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total_loss, dict(parts), grad_norm

    # -- the loop
    def run(
        self,
        start: Start,
        forward: Forward,
        *,
        save: Callable[[int, float], None],
        validate: Callable[[int], dict[str, float]] | None = None,
    ) -> Outcome:
        """Steps ``start.step + 1 .. total``; ``save(step, elapsed_s)`` writes a resumable checkpoint,
        ``validate(step)`` returns metrics (every rank calls both: they may be collective)."""
        s, total, step = self.s, self.s.total, start.step
        bar = tqdm(
            total=total, initial=step, desc=self.name, disable=not (self.info.is_main and s.progress),
            dynamic_ncols=True, mininterval=1.0, leave=False,
        )
        t0 = time.monotonic()
        window: list[float] = []
        window_parts: dict[str, list[float]] = defaultdict(list)
        last_loss = start.last_loss
        threads = AdaptiveThreads(max_threads=s.num_threads) if s.adapt_threads_every > 0 else None
        if threads is not None and step == 0:
            log.info("stage %s: adapt_threads_every=%d follows the machine's load; float sums then depend"
                     " on it, so a resumed run is not bit-identical to an uninterrupted one (0: a fixed count)",
                     self.name, s.adapt_threads_every)
        while step < total:
            if threads is not None and step % s.adapt_threads_every == 0:
                threads()
            lr = max(self.scheduler.get_last_lr())  # the rate this step uses
            loss, parts, grad_norm = self.step(forward)
            step += 1
            window.append(loss)
            for k, v in parts.items():
                window_parts[k].append(v)
            if step % s.log_every == 0 or step == total:
                now = time.monotonic() - t0
                last_loss = self._log(
                    step=step, window=window, parts=window_parts, lr=lr, grad_norm=grad_norm,
                    time_s=start.elapsed_s + now, steps_per_s=(step - start.step) / max(now, 1e-9),
                    bar_shown=not bar.disable,
                )
                window.clear()
                window_parts.clear()
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
            bar.update(1)
            if validate is not None and s.val_every and step % s.val_every == 0 and step < total:
                validate(step)
            if s.save_every and step % s.save_every == 0 and step < total:
                save(step, start.elapsed_s + time.monotonic() - t0)
            if self.step_hook is not None:
                self.step_hook(step)
        bar.close()
        wall = start.elapsed_s + time.monotonic() - t0
        # resumable checkpoint first: a failure in the final validation must not lose the training
        # (a rerun resumes at the last step, validates and writes the final model)
        if start.resumed_from is None or step > start.resumed_from:
            save(step, wall)
        val = validate(step) if validate is not None else {}
        return Outcome(step=step, wall_s=wall, last_loss=last_loss, val=val)

    def _log(self, *, step: int, window: list[float], parts: dict[str, list[float]], lr: float,
             grad_norm: float | None, time_s: float, steps_per_s: float, bar_shown: bool) -> float:
        """Write one metrics record (loss averaged over the window and the ranks); returns that loss."""
        mean_loss = dist_utils.mean_across_ranks(float(np.mean(window)), self.info)
        rec: dict[str, Any] = {"stage": self.name, "step": step, **self.record_extra(), "loss": mean_loss, "lr": lr,
                               "time_s": round(time_s, 3), "steps_per_s": round(steps_per_s, 4)}
        if grad_norm is not None:
            rec["grad_norm"] = grad_norm
        rec.update({k: float(np.mean(v)) for k, v in parts.items()})
        self.metrics.write(rec)
        if not bar_shown and self.info.is_main:
            described = " ".join(f"{k} {float(np.mean(v)):.4f}" for k, v in parts.items())
            log.info("stage %s step %d/%d loss %.4f%s lr %.2e", self.name, step, self.s.total, mean_loss,
                     f" ({described})" if described else "", lr)
        return mean_loss
