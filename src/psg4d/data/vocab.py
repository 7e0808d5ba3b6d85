"""The vocabularies a model may learn: what the training graphs contain, never a dataset's
declared list alone.

A dataset's declared vocabulary may name categories that only its validation or test split holds
(the synthetic world's held-out categories): they must not enter a model trained on the training
split. Both model families fill their class lists from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from psg4d.data.descriptions import object_description
from psg4d.data.readers.base import DatasetReader


@dataclass(frozen=True, kw_only=True)
class TrainingVocab:
    objects: list[str]
    predicates: list[str]
    # category -> its object descriptions, first seen first (the chain's describe step)
    descriptions: dict[str, list[str]]


def training_vocab(parts: Iterable[tuple[DatasetReader, Sequence[str]]]) -> TrainingVocab:
    """Object categories and predicates that occur in the graphs of the given (reader, video ids)
    parts, in the datasets' declared order, then first-seen (annotations only: no mask is read)."""
    described: dict[str, dict[str, None]] = {}
    declared_obj: dict[str, None] = {}
    declared_pred: dict[str, None] = {}
    seen_obj: dict[str, None] = {}
    seen_pred: dict[str, None] = {}
    for reader, ids in parts:
        declared_obj.update(dict.fromkeys(reader.object_vocab))
        declared_pred.update(dict.fromkeys(reader.predicate_vocab))
        for vid in ids:
            graph = reader.read_graph(vid, with_masks=False)
            seen_obj.update(dict.fromkeys(o.category for o in graph.objects))
            for o in graph.objects:
                described.setdefault(o.category, {})[object_description(o)] = None
            seen_pred.update(dict.fromkeys(r.predicate for r in graph.relations))

    def ordered(declared: dict[str, None], seen: dict[str, None]) -> list[str]:
        return [c for c in declared if c in seen] + [c for c in seen if c not in declared]

    objects = ordered(declared_obj, seen_obj)
    return TrainingVocab(objects=objects, predicates=ordered(declared_pred, seen_pred),
                         descriptions={c: list(described[c]) for c in objects})
