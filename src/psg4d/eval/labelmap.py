"""Open-vocabulary labels: normalisation and an explicit free-text -> vocabulary map.

An open-vocabulary model may say ``"Coffee  Mug"`` where the benchmark says
``"cup"``. The evaluator never guesses: labels are compared after
:func:`normalize_label` (case and whitespace only), and anything else needs a
:class:`LabelMap`, written by the user or built by the automatic mapper
(:mod:`psg4d.eval.automap`, ``psg4d eval --label-map auto``). A predicted label
that is still outside the vocabulary is scored as wrong and counted as
*unmapped* in the result.

Label-map file (JSON)::

    {"objects": {"coffee mug": "cup", ...}, "predicates": {"is holding": "holding", ...}}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from psg4d.errors import DataError


def normalize_label(label: str) -> str:
    """Lower case, whitespace trimmed and collapsed: ``" Coffee  Mug"`` -> ``"coffee mug"``."""
    return " ".join(str(label).lower().split())


def _normalized_table(table: Mapping[str, str], where: str, kind: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in table.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise DataError(where, f"entries must map a string to a string, got {k!r}: {v!r}", field=kind)
        nk, nv = normalize_label(k), normalize_label(v)
        # two spellings of one free-text label pointing at different classes is a mistake in the file
        if nk in out and out[nk] != nv:
            raise DataError(where, f"{k!r} maps to both {out[nk]!r} and {nv!r}", field=kind)
        out[nk] = nv
    return out


@dataclass(frozen=True)
class LabelMap:
    """Free-text label -> vocabulary label, for objects and predicates (keys and values normalised)."""

    objects: dict[str, str] = field(default_factory=dict)
    predicates: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: object, *, where: str = "label map") -> "LabelMap":
        if not isinstance(d, dict):
            raise DataError(where, f"a label map must be a JSON object, got {type(d).__name__}")
        unknown = set(d) - {"objects", "predicates"}
        if unknown:
            raise DataError(where, f"unknown keys {sorted(unknown)}; expected 'objects' and/or 'predicates'")
        tables = {}
        for kind in ("objects", "predicates"):
            t = d.get(kind, {})
            if not isinstance(t, dict):
                raise DataError(where, f"must be a JSON object, got {type(t).__name__}", field=kind)
            tables[kind] = _normalized_table(t, where, kind)
        return cls(objects=tables["objects"], predicates=tables["predicates"])

    @classmethod
    def load(cls, path: str | Path) -> "LabelMap":
        path = Path(path)
        if not path.is_file():
            raise DataError(path, "label map file not found")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DataError(path, f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
        return cls.from_dict(d, where=str(path))

    def object(self, label: str) -> str:
        n = normalize_label(label)
        return self.objects.get(n, n)

    def predicate(self, label: str) -> str:
        n = normalize_label(label)
        return self.predicates.get(n, n)


IDENTITY = LabelMap()
