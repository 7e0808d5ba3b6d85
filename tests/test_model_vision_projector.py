"""Projector factory."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from psg4d.errors import ConfigError
from psg4d.model.projector import PROJECTORS, build_projector


@pytest.mark.parametrize("name", sorted(PROJECTORS))
def test_shapes(name):
    proj = build_projector(name, 64, 96)
    assert proj(torch.randn(2, 5, 64)).shape == (2, 5, 96)


def test_layouts():
    assert isinstance(build_projector("linear", 8, 4), nn.Linear)
    mlp = build_projector("mlp2x_gelu", 8, 4)
    assert [type(m) for m in mlp] == [nn.Linear, nn.GELU, nn.Linear]
    assert mlp[0].out_features == 4


def test_unknown_name_lists_options():
    with pytest.raises(ConfigError) as e:
        build_projector("qformer", 8, 4)
    assert "linear" in str(e.value) and "mlp2x_gelu" in str(e.value)
    with pytest.raises(ConfigError, match="positive"):
        build_projector("linear", 0, 4)
