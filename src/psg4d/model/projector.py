"""Projector from the encoder's visual tokens to the LLM's embedding width.

Names are an explicit table (:data:`PROJECTORS`); an unknown name raises
:class:`~psg4d.errors.ConfigError` that lists the options.

- ``linear``: a single Linear (LLaVA-1).
- ``mlp2x_gelu``: Linear, GELU, Linear (LLaVA-1.5), the usual choice when the
  LLM width differs a lot from the vision width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from psg4d.errors import ConfigError


@dataclass
class ProjectorConfig:
    name: str = "mlp2x_gelu"


def _linear(in_dim: int, out_dim: int) -> nn.Module:
    return nn.Linear(in_dim, out_dim)


def _mlp2x_gelu(in_dim: int, out_dim: int) -> nn.Module:
    # Hidden width = out_dim as in LLaVA-1.5.
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


PROJECTORS: dict[str, Callable[[int, int], nn.Module]] = {
    "linear": _linear,
    "mlp2x_gelu": _mlp2x_gelu,
}


def build_projector(name: str, in_dim: int, out_dim: int) -> nn.Module:
    """``[..., in_dim] -> [..., out_dim]`` projector by name."""
    factory = PROJECTORS.get(name)
    if factory is None:
        raise ConfigError(f"unknown projector {name!r}; options: {sorted(PROJECTORS)}")
    if in_dim < 1 or out_dim < 1:
        raise ConfigError(f"projector {name!r}: dimensions must be positive, got {in_dim} -> {out_dim}")
    return factory(in_dim, out_dim)
