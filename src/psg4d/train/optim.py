"""Optimizer, learning-rate schedule and autocast dtype of a stage, chosen from explicit tables.

Per-prefix learning rates come from ``stage.lr`` (longest matching prefix wins);
the schedule is a linear warmup followed by a decay shape from :data:`SCHEDULERS`
down to ``lr * min_lr_ratio``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from psg4d.errors import ConfigError
from psg4d.train.params import clean_name, matches

if TYPE_CHECKING:  # annotations only: stages checks optimizer and scheduler names against the tables here
    from psg4d.train.stages import StageConfig, TrainConfig


def _adamw(groups: list[dict], t: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)


def _sgd(groups: list[dict], t: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=t.lr, momentum=t.betas[0], weight_decay=t.weight_decay)


OPTIMIZERS: dict[str, Callable[[list[dict], TrainConfig], torch.optim.Optimizer]] = {
    "adamw": _adamw,
    "sgd": _sgd,
}

# Decay shape after warmup: progress in [0, 1] -> multiplier in [0, 1].
SCHEDULERS: dict[str, Callable[[float], float]] = {
    "cosine": lambda p: 0.5 * (1.0 + math.cos(math.pi * p)),
    "linear": lambda p: 1.0 - p,
    "constant": lambda p: 1.0,
}

AMP_DTYPES: dict[str, torch.dtype | None] = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def param_groups(model: nn.Module, stage: StageConfig, t: TrainConfig) -> list[dict]:
    """One group per (learning rate, decay): longest matching ``stage.lr`` prefix wins;
    biases and norm weights (1-D) get no weight decay."""
    by_prefix = sorted(stage.lr.items(), key=lambda kv: -len(kv[0]))
    used: set[str] = set()
    groups: dict[tuple[str, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        clean = clean_name(name)
        matching = [(pre, lr) for pre, lr in by_prefix if matches(clean, pre)]
        prefix, lr = matching[0] if matching else ("", t.lr)
        used.update(pre for pre, _ in matching)
        decay = p.ndim >= 2
        g = groups.setdefault(
            (prefix, decay),
            {"params": [], "lr": lr, "weight_decay": t.weight_decay if decay else 0.0, "name": prefix or "default"},
        )
        g["params"].append(p)
    unused = sorted(set(stage.lr) - used)
    if unused:
        raise ConfigError(f"stage {stage.name!r}: lr prefixes {unused} match no trainable parameter")
    return list(groups.values())


def build_optimizer(model: nn.Module, stage: StageConfig, t: TrainConfig) -> torch.optim.Optimizer:
    if t.optimizer not in OPTIMIZERS:
        raise ConfigError(f"train.optimizer: unknown {t.optimizer!r}; valid: {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[t.optimizer](param_groups(model, stage, t), t)


def build_scheduler(optimizer: torch.optim.Optimizer, t: TrainConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    if t.scheduler not in SCHEDULERS:
        raise ConfigError(f"train.scheduler: unknown {t.scheduler!r}; valid: {sorted(SCHEDULERS)}")
    shape = SCHEDULERS[t.scheduler]
    warmup, floor = t.warmup_steps, t.min_lr_ratio

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return floor + (1.0 - floor) * shape(progress)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    if mode == "auto":
        # bf16 needs no loss scaling; CPU autocast is slower than fp32 on most CPUs.
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    if mode not in AMP_DTYPES:
        raise ConfigError(f"train.amp: unknown {mode!r}; valid: ['auto', {', '.join(map(repr, AMP_DTYPES))}]")
    if mode == "fp16" and device.type != "cuda":
        raise ConfigError("train.amp=fp16 needs a CUDA device (use bf16 or off on CPU)")
    return AMP_DTYPES[mode]
