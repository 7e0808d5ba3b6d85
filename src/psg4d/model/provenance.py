"""Where a model's parameters came from: pretrained weight files versus their own initialisation.

Every loader of pretrained weights (ImageBind, EfficientNet-Lite0, SAM2, a
pretrained LLM) calls :func:`mark_pretrained` on the parameters it filled. The
mark lives on the ``nn.Parameter`` objects themselves, so it survives wrapping
(peft's LoRA layers keep the original parameters as their base layer) and
renaming; state-dict loads copy values into the same objects and keep it.

What reads it:

* the training loop refuses a stage that freezes a parameter which is neither
  pretrained nor loaded from an earlier stage (a frozen random module never learns);
* checkpoints leave frozen pretrained parameters out and record where they
  came from instead (:mod:`psg4d.model.pretrained`; where weight files are found
  and how they are identified: :mod:`psg4d.model.weight_files`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn

from psg4d.errors import CheckpointError

_SOURCE_ATTR = "_psg4d_pretrained_source"


def mark_pretrained(module: nn.Module, names: Iterable[str] | Mapping[str, object], *, source: str | Path) -> int:
    """Record that parameters ``names`` (relative to ``module``; buffers are ignored) were loaded
    from ``source`` (a weight file or folder). Returns how many parameters were marked."""
    params = dict(module.named_parameters(remove_duplicate=False))
    where = str(Path(source).expanduser().resolve())
    marked = 0
    for name in names:
        p = params.get(name)
        if p is not None:
            setattr(p, _SOURCE_ATTR, where)
            marked += 1
    return marked


def pretrained_source(param: nn.Parameter) -> str | None:
    """The weight file/folder ``param`` was loaded from (None: its own initialisation)."""
    return getattr(param, _SOURCE_ATTR, None)


def pretrained_parameter_names(model: nn.Module) -> set[str]:
    """Names (as in ``named_parameters()``, tied duplicates included) of the pretrained parameters."""
    return {n for n, p in model.named_parameters(remove_duplicate=False) if pretrained_source(p) is not None}


def frozen_pretrained_sources(model: nn.Module) -> dict[str, list[str]]:
    """Weight source -> names of the frozen parameters loaded from it: what a checkpoint can
    leave out, because the source reproduces them."""
    out: dict[str, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        src = pretrained_source(p)
        if src is not None and not p.requires_grad:
            out.setdefault(src, []).append(n)
    return out


def pretrained_groups(model: nn.Module) -> dict[str, list[str]]:
    """Weight source -> names of all the parameters loaded from it (frozen or not)."""
    out: dict[str, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        src = pretrained_source(p)
        if src is not None:
            out.setdefault(src, []).append(n)
    return out


def names_digest(names: Iterable[str]) -> str:
    """SHA-256 of a set of parameter names (order-free)."""
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()


def check_finite(tensors: Iterable[tuple[str, torch.Tensor]], where: str | Path) -> None:
    """Refuse (CheckpointError naming ``where`` and the tensor) a floating tensor holding NaN or inf.

    A diverged run's weights load without complaint and then write ``NaN`` scores, which are not
    JSON; a checkpoint is refused at load instead.
    """
    for name, t in tensors:
        if (t.is_floating_point() or t.is_complex()) and t.numel() and not bool(torch.isfinite(t).all()):
            kind = "NaN" if bool(torch.isnan(t).any()) else "infinite values"
            raise CheckpointError(f"{where}: tensor {name!r} holds {kind}; the checkpoint is unusable")


def check_shapes(
    stored: Mapping[str, Sequence[int]], expected: Mapping[str, Sequence[int]], where: str | Path
) -> None:
    """Refuse (one CheckpointError line naming ``where``) stored tensors whose shapes differ from the
    model's tensors of the same name: ``stored`` and ``expected`` map names to shapes.

    A checkpoint of other model sizes differs in dozens of tensors; torch lists every one, which
    buries the cause. The count, one example and the likely cause are what a user can act on.
    """
    differ = [(name, list(stored[name]), list(shape)) for name, shape in expected.items()
              if name in stored and list(stored[name]) != list(shape)]
    if differ:
        name, theirs, ours = differ[0]
        count = f"{len(differ)} tensors differ" if len(differ) > 1 else "1 tensor differs"
        raise CheckpointError(
            f"{where}: weights do not fit this model: {count} in shape (e.g. {name} {theirs} in the file"
            f" vs {ours} here); was it trained with other model sizes?"
        )
