"""Optimizers, learning-rate schedules and autocast dtypes, chosen by name from explicit tables.

Both model families build theirs here: the 4D-LLM from its ``train:`` settings and per-prefix
parameter groups (:func:`psg4d.train.params.param_groups`), the pipeline from each stage's
``StageTrainConfig``. The schedule is a linear warmup followed by a decay shape from
:data:`SCHEDULERS` down to ``lr * min_lr_ratio``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from psg4d.errors import ConfigError


def _adamw(groups: list[dict], *, lr: float, betas: tuple[float, float], weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay)


def _sgd(groups: list[dict], *, lr: float, betas: tuple[float, float], weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=lr, momentum=betas[0], weight_decay=weight_decay)


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
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


def make_optimizer(name: str, groups: list[dict], *, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                   weight_decay: float = 0.0, where: str = "optimizer") -> torch.optim.Optimizer:
    """``OPTIMIZERS[name]`` over parameter ``groups`` (each a dict with ``params``, optionally its own
    ``lr`` / ``weight_decay``); ``where`` names the setting in the error for an unknown name."""
    if name not in OPTIMIZERS:
        raise ConfigError(f"{where}: unknown {name!r}; valid: {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, *, shape: str, warmup_steps: int, min_lr_ratio: float,
                   total_steps: int, where: str = "scheduler") -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup_steps``, then ``SCHEDULERS[shape]`` from the full rate down to
    ``min_lr_ratio`` of it at ``total_steps``."""
    if shape not in SCHEDULERS:
        raise ConfigError(f"{where}: unknown {shape!r}; valid: {sorted(SCHEDULERS)}")
    decay = SCHEDULERS[shape]

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * decay(progress)

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
