from dataclasses import dataclass, field
from typing import Literal

import pytest

from psg4d.config import apply_overrides, from_dict, load_yaml, merge_dicts, save_yaml, to_dict
from psg4d.errors import ConfigError


@dataclass
class Inner:
    width: int = 8
    act: Literal["gelu", "relu"] = "gelu"
    lrs: dict[str, float] = field(default_factory=dict)


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    path: str | None = None
    steps: list[int] = field(default_factory=lambda: [1, 2])


def test_yaml_base_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\ninner: {width: 16, lrs: {llm: 0.001}}\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\ninner: {act: relu}\n")
    data = apply_overrides(load_yaml(tmp_path / "child.yaml"), ["inner.lrs.encoder=1e-4", "steps=[3]"])
    cfg = from_dict(Outer, data)
    assert cfg == Outer(name="base", inner=Inner(16, "relu", {"llm": 0.001, "encoder": 1e-4}), steps=[3])
    save_yaml(cfg, tmp_path / "out.yaml")
    assert from_dict(Outer, load_yaml(tmp_path / "out.yaml")) == cfg
    assert to_dict(cfg)["inner"]["width"] == 16


def test_merge_dicts_recurses_into_mappings_and_keeps_its_inputs():
    base = {"a": {"x": 1, "y": {"p": 1}}, "b": [1, 2]}
    over = {"a": {"y": {"q": 2}}, "b": [3]}
    assert merge_dicts(base, over) == {"a": {"x": 1, "y": {"p": 1, "q": 2}}, "b": [3]}
    assert base == {"a": {"x": 1, "y": {"p": 1}}, "b": [1, 2]}
    # a mapping over a scalar (or a scalar over a mapping) replaces it
    assert merge_dicts({"a": 1}, {"a": {"x": 2}}) == {"a": {"x": 2}}
    assert merge_dicts({"a": {"x": 2}}, {"a": None}) == {"a": None}


@pytest.mark.parametrize(
    "data, msg",
    [
        ({"inner": {"widht": 3}}, r"inner: unknown key\(s\) \['widht']; config.inner.widht \(did you mean 'width'\?\); valid keys"),
        ({"inner": {"width": "big"}}, "expected an integer"),
        ({"inner": {"act": "tanh"}}, "not one of"),
        ({"steps": 3}, "expected a list"),
    ],
)
def test_strict_errors(data, msg):
    with pytest.raises(ConfigError, match=msg):
        from_dict(Outer, data)


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides({}, ["noequals"])
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"name": "x"}, ["name.sub=1"])
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_yaml(tmp_path / "nope.yaml")


def test_override_list_items_by_index():
    data = {"stages": [{"name": "a", "steps": 1}, {"name": "b", "steps": 2}]}
    out = apply_overrides(data, ["stages.1.steps=5", "stages.0.name=first"])
    assert out["stages"] == [{"name": "first", "steps": 1}, {"name": "b", "steps": 5}]
    assert data["stages"][1]["steps"] == 2  # the input is not modified
    with pytest.raises(ConfigError, match="not an index of a list of 2 items"):
        apply_overrides(data, ["stages.2.steps=1"])
    with pytest.raises(ConfigError, match="not an index"):
        apply_overrides(data, ["stages.x.steps=1"])
