"""Typed dataclass configs, YAML presets and dotted overrides.

A config is a (nested) dataclass. :func:`from_dict` builds one from plain data
strictly: an unknown key is an error that lists the valid ones. Overrides are
``dotted.key=value`` strings whose value is parsed as YAML (``lr=1e-4``,
``model.llm.name=tiny``, ``train.stages=[a, b]``).

YAML presets may name a base preset with ``_base_: other.yaml`` (relative to
the file); the child's keys are merged over the base's, recursively.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from psg4d.errors import ConfigError

T = TypeVar("T")

log = logging.getLogger(__name__)


def to_dict(cfg: Any) -> Any:
    """Dataclass (nested) -> plain dict/list/scalars, JSON- and YAML-safe."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} fits none of {tp}: {'; '.join(errors)}")
    if origin is typing.Literal:
        if value not in get_args(tp):
            choices = get_args(tp)
            raise ConfigError(f"{where}: {value!r} is not one of {list(choices)}{did_you_mean(value, choices)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return _from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        out = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = (get_args(tp) + (Any, Any))[:2]
        return {_convert(kt, k, where): _convert(vt, v, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if tp is Path:
        return Path(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any], *, where: str = "config", source: str | Path | None = None) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ConfigError.

    ``where`` is the key path of ``data`` (``""`` at the top level of a file); ``source`` names the
    file, kept apart from the key path: ``configs/x.yaml: train.lr: must be > 0, got -1.0``.
    """
    if source is None:
        return _from_dict(cls, data, where)
    try:
        return _from_dict(cls, data, where)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def _key(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _from_dict(cls: type[T], data: dict[str, Any], where: str) -> T:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'top level'}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        hints_text = "".join(
            f"; {_key(where, str(k))}{did_you_mean(k, fields)}" if did_you_mean(k, fields) else "" for k in unknown
        )
        raise ConfigError(
            f"{where or 'top level'}: unknown key(s) {unknown}{hints_text}; valid keys: {sorted(fields)}"
        )
    kwargs = {k: _convert(hints[k], v, _key(where, k)) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where or 'top level'}: {e}") from None


def merge_dicts(base: dict, over: dict) -> dict:
    """``over``'s keys over ``base``'s, recursing where both hold a mapping (inputs unchanged)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML preset, resolving ``_base_`` chains."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found" if not path.exists() else f"{path}: not a file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: malformed YAML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    base = data.pop("_base_", None)
    if base:
        data = merge_dicts(load_yaml(path.parent / base), data)
    return data


@dataclass(frozen=True, kw_only=True)
class ExclusiveKeys:
    """Keys of one config section of which at most one may be set (e.g. a stage's ``max_steps`` and
    ``epochs``). An override that sets one of them replaces the others where the preset set them;
    overrides that set two of them on one command line are an error."""

    # Dotted path of the section; ``*`` matches any one key or list index (``stages.*``).
    section: str
    keys: tuple[str, ...]

    def covers(self, section: Sequence[str], key: str) -> bool:
        pattern = self.section.split(".") if self.section else []
        return key in self.keys and len(pattern) == len(section) and all(
            p in ("*", s) for p, s in zip(pattern, section)
        )


def apply_overrides(
    data: dict[str, Any], overrides: list[str] | None, *, exclusive: Sequence[ExclusiveKeys] = ()
) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a copy of a plain dict;
    a numeric part indexes a list (``stages.0.max_steps=100``).

    ``exclusive``: groups of keys that exclude each other. Overriding one with a value clears the
    others (set to null) when they came from ``data`` (the preset), so ``stages.0.max_steps=500``
    works on a preset whose stage sets ``epochs``; two of them set on the same command line are a
    ConfigError naming both overrides."""
    data = copy.deepcopy(data)
    # what the command line set, to tell the preset's values (replaced) from the user's (a conflict):
    # (section node, key, override) per exclusive key set, and the sections an override assigned whole
    set_keys: list[tuple[dict, str, str]] = []
    given: list[tuple[Any, str]] = []
    for ov in overrides or []:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} must look like key.path=value")
        key, raw = ov.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {ov!r}: value is not valid YAML: {e}") from None
        node: Any = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            if isinstance(node, list):  # `stages.0.max_steps`: a list item by index
                node = node[_list_index(node, p, ov)]
                continue
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, (dict, list)):
                raise ConfigError(f"override {ov!r}: {p!r} is not a section")
            node = nxt
        if isinstance(node, list):
            node[_list_index(node, parts[-1], ov)] = value
        elif isinstance(node, dict):
            if value is not None:
                _replace_exclusive(node, parts, ov, exclusive, set_keys, given)
            node[parts[-1]] = value
            if value is not None and any(g.covers(parts[:-1], parts[-1]) for g in exclusive):
                set_keys.append((node, parts[-1], ov))
        else:
            raise ConfigError(f"override {ov!r}: {parts[-2]!r} is not a section")
        given.extend((section, ov) for section in _sections(value))
    return data


def build_with_overrides(
    build: "typing.Callable[[dict[str, Any]], T]", data: dict[str, Any], overrides: list[str] | None, *,
    where: str, exclusive: Sequence[ExclusiveKeys] = (),
) -> T:
    """``build(data with overrides)``, and where that is a ConfigError that the preset alone does
    not have, the blame on the first ``--set`` that brings it (``--set KEY=VALUE: problem``), not
    on the preset file ``where``."""
    # outside the try: a conflict between overrides names them itself
    full = apply_overrides(data, overrides, exclusive=exclusive)
    try:
        return build(full)
    except ConfigError as e:
        if not overrides:
            raise
        error = e
    for i in range(len(overrides)):
        try:
            build(apply_overrides(data, overrides[:i], exclusive=exclusive))
        except ConfigError as e:
            if i == 0:
                raise error from None  # the preset itself is at fault
            error, culprit = e, overrides[i - 1]
            break
    else:
        culprit = overrides[-1]
    problem = str(error).removeprefix(f"{where}: ")
    raise ConfigError(f"--set {culprit}: {problem}") from None


def _sections(value: Any) -> list[Any]:
    """Every mapping inside ``value`` (itself included): sections an override assigned whole."""
    if isinstance(value, dict):
        return [value] + [s for v in value.values() for s in _sections(v)]
    if isinstance(value, list):
        return [s for v in value for s in _sections(v)]
    return []


def _replace_exclusive(
    node: dict, parts: list[str], ov: str, exclusive: Sequence[ExclusiveKeys],
    set_keys: list[tuple[dict, str, str]], given: list[tuple[Any, str]],
) -> None:
    """Clear the keys that ``ov`` (setting ``parts[-1]`` of section ``node``) excludes, unless
    the command line set them too (then a ConfigError naming both overrides)."""
    key = parts[-1]
    for group in exclusive:
        if not group.covers(parts[:-1], key):
            continue
        for other in group.keys:
            if other == key or node.get(other) is None:
                continue
            by = [o for n, k, o in set_keys if n is node and k == other]
            by += [o for n, o in given if n is node]
            if by:
                raise ConfigError(
                    f"overrides {by[-1]!r} and {ov!r} set both {other} and {key}, which exclude each other;"
                    f" give one of {' / '.join(group.keys)}"
                )
            log.info("override %r replaces %s=%r of %s", ov, other, node[other], ".".join(parts[:-1]))
            node[other] = None


def _list_index(items: list, part: str, ov: str) -> int:
    if not part.lstrip("-").isdigit() or not -len(items) <= int(part) < len(items):
        raise ConfigError(f"override {ov!r}: {part!r} is not an index of a list of {len(items)} items")
    return int(part)


def save_yaml(cfg: Any, path: str | Path) -> None:
    from psg4d.utils.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
