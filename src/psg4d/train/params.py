"""Which parameters a stage trains, at which learning rate, and the check that nothing it freezes
is left random.

A stage trains the parameters under its prefixes and freezes the rest. A frozen
parameter keeps the value the model was built with, so it must have come from
weights: :func:`check_frozen_initialised` refuses a stage that would freeze a
parameter that is neither pretrained (the model's ``pretrained_parameters()``),
unused (``unused_parameters()``), nor loaded from the stage's init checkpoint.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Collection

import torch
from torch import nn

from psg4d.engine.optim import make_optimizer, make_scheduler
from psg4d.errors import ConfigError

if TYPE_CHECKING:  # annotations only: stages checks optimizer and scheduler names against the engine's tables
    from psg4d.train.stages import StageConfig, TrainConfig

# Groups named in the error before the rest is only counted.
_MAX_GROUPS_SHOWN = 12


def clean_name(name: str) -> str:
    # Wrappers insert these into parameter names; prefixes are given on the bare model.
    return name.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", "").removeprefix("module.")


def matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def top_level_modules(model: nn.Module) -> list[str]:
    return sorted({n.split(".", 1)[0] for n, _ in model.named_parameters()})


def set_trainable(model: nn.Module, prefixes: list[str]) -> tuple[int, int]:
    """Freeze parameters outside ``prefixes``; returns (trainable, total) counts.

    A parameter the model froze itself (e.g. LoRA base weights) stays frozen, and one it declares
    unused (``unused_parameters()``: never in forward, kept for strict loading) never trains: a
    stage only narrows what the model leaves trainable, and DDP (``find_unused_parameters: false``)
    needs every trainable parameter in the graph.
    """
    named = list(model.named_parameters())
    unused = _declared(model, "unused_parameters")
    for prefix in prefixes:
        if not any(matches(n, prefix) for n, _ in named):
            raise ConfigError(
                f"trainable prefix {prefix!r} matches no parameter; the model's modules: {top_level_modules(model)}"
            )
    n_train = n_total = 0
    for n, p in named:
        keep = p.requires_grad and n not in unused and any(matches(n, pre) for pre in prefixes)
        p.requires_grad_(keep)
        n_total += p.numel()
        n_train += p.numel() if keep else 0
    if n_train == 0:
        raise ConfigError(f"trainable prefixes {prefixes} leave no trainable parameter")
    return n_train, n_total


@dataclass(frozen=True, kw_only=True)
class FrozenModules:
    """A stage's frozen parameters by why they may stay frozen, each as module prefixes
    (a parameter that qualifies twice is listed under the first field)."""

    pretrained: list[str]
    from_init: list[str]
    unused: list[str]


def _declared(model: nn.Module, method: str) -> set[str]:
    """The parameter names ``model.<method>()`` reports (none without the method)."""
    fn = getattr(model, method, None)
    if not callable(fn):
        return set()
    declared = set(fn())
    # a tied parameter's second name (e.g. lm_head.weight) is a name too
    unknown = sorted(declared - {n for n, _ in model.named_parameters(remove_duplicate=False)})
    if unknown:
        raise ConfigError(
            f"model {type(model).__name__}: {method}() names {len(unknown)} unknown parameter(s), e.g. {unknown[:4]};"
            " it must return names as in named_parameters()"
        )
    return declared


def _prefixes(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _group_by_module(names: Collection[str], all_names: Collection[str]) -> dict[str, int]:
    """``names`` as few module prefixes as possible: each name goes under its highest ancestor
    all of whose parameters (among ``all_names``) are in ``names``; prefix -> parameter count."""
    chosen = set(names)
    total: Counter[str] = Counter()
    inside: Counter[str] = Counter()
    for n in all_names:
        for pre in _prefixes(n):
            total[pre] += 1
            inside[pre] += n in chosen
    groups: Counter[str] = Counter()
    for n in chosen:
        groups[next(pre for pre in _prefixes(n) if inside[pre] == total[pre])] += 1
    return dict(sorted(groups.items()))


def check_frozen_initialised(model: nn.Module, *, stage_name: str, init_names: Collection[str]) -> FrozenModules:
    """Refuse (ConfigError) a stage whose frozen parameters would stay at random values.

    Call after :func:`set_trainable`. ``init_names``: the tensors of the stage's init
    checkpoint (empty without one). Returns why each frozen module may stay frozen.
    """
    named = dict(model.named_parameters())
    frozen = {n for n, p in named.items() if not p.requires_grad}
    pretrained = _declared(model, "pretrained_parameters") & frozen
    from_init = (frozen & set(init_names)) - pretrained
    unused = (_declared(model, "unused_parameters") & frozen) - pretrained - from_init
    left_random = frozen - pretrained - from_init - unused
    if left_random:
        groups = _group_by_module(left_random, named)
        shown = [f"{pre} ({n} parameter{'s' if n > 1 else ''})" for pre, n in list(groups.items())[:_MAX_GROUPS_SHOWN]]
        more = f" and {len(groups) - _MAX_GROUPS_SHOWN} more" if len(groups) > _MAX_GROUPS_SHOWN else ""
        raise ConfigError(
            f"stage {stage_name!r}: frozen parameters that are not pretrained, not unused and not in the init"
            f" checkpoint would stay random: {', '.join(shown)}{more}; add them to the stage's trainable, init the"
            " stage from a checkpoint that holds them, or (parameters the model freezes itself) have the model"
            " declare them in pretrained_parameters() / unused_parameters()"
        )
    return FrozenModules(
        pretrained=list(_group_by_module(pretrained, named)),
        from_init=list(_group_by_module(from_init, named)),
        unused=list(_group_by_module(unused, named)),
    )


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
    return make_optimizer(t.optimizer, param_groups(model, stage, t), lr=t.lr, betas=t.betas,
                          weight_decay=t.weight_decay, where="train.optimizer")


def build_scheduler(optimizer: torch.optim.Optimizer, t: TrainConfig, total_steps: int):
    return make_scheduler(optimizer, shape=t.scheduler, warmup_steps=t.warmup_steps, min_lr_ratio=t.min_lr_ratio,
                          total_steps=total_steps, where="train.scheduler")
