"""The scene-graph types of the canonical schema and their JSON form.

* :class:`MaskTube` — one binary mask per frame, stored as COCO RLE
  (pycocotools); a frame where the object is absent is ``None``.
* :class:`ObjectTrack` — an object id, an (open-vocabulary) category, thing/stuff
  and its mask tube.
* :class:`Relation` — ``<subject, predicate, object>`` with a list of inclusive
  ``[start, end]`` frame spans and, for predictions, a score.
* :class:`SceneGraph4D` — one video's objects and relations (ground truth or a
  ranked prediction), with the vocabularies used.

JSON (de)serialisation round-trips exactly. :meth:`SceneGraph4D.validate` names
the file and field of any inconsistency. Files holding many scene graphs are
:mod:`psg4d.data.scene_graph_files`; :mod:`psg4d.data.schema` re-exports both.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from psg4d.data.masks import coco_rle, rle_areas, rle_decode, rle_encode_batch, rle_problem
from psg4d.errors import DataError
from psg4d.utils.io import atomic_path, json_text

SCHEMA_VERSION = 1

Span = tuple[int, int]  # inclusive [start, end] frame indices


# --------------------------------------------------------------------------- tubes


@dataclass
class MaskTube:
    """Per-frame binary masks of one object as RLEs; ``None`` = absent in that frame."""

    height: int
    width: int
    rles: list[dict | None]

    @property
    def num_frames(self) -> int:
        return len(self.rles)

    @classmethod
    def from_dense(cls, masks: np.ndarray, present: Sequence[bool] | None = None) -> "MaskTube":
        """``[T, H, W]`` bool -> tube. Empty frames become ``None`` unless ``present`` says otherwise."""
        masks = np.asarray(masks).astype(bool, copy=False)
        T, H, W = masks.shape
        rles: list[dict | None] = list(rle_encode_batch(masks))
        nonempty = masks.reshape(T, -1).any(axis=1)
        for t in range(T):
            keep = bool(present[t]) if present is not None else bool(nonempty[t])
            if not keep:
                rles[t] = None
        return cls(height=H, width=W, rles=rles)

    @classmethod
    def empty(cls, num_frames: int, height: int, width: int) -> "MaskTube":
        return cls(height=height, width=width, rles=[None] * num_frames)

    def frame(self, t: int) -> np.ndarray:
        """bool ``[H, W]`` (all False where absent)."""
        r = self.rles[t]
        if r is None:
            return np.zeros((self.height, self.width), dtype=bool)
        return rle_decode(r)

    def to_dense(self) -> np.ndarray:
        """bool ``[T, H, W]``. Memory is T*H*W bytes: use :meth:`frame` on long videos."""
        out = np.zeros((self.num_frames, self.height, self.width), dtype=bool)
        idx = [t for t, r in enumerate(self.rles) if r is not None]
        for i in range(0, len(idx), 255):  # chunks bound the uint8 scratch array of decode()
            chunk = idx[i : i + 255]
            dec = mask_utils.decode([coco_rle(self.rles[t]) for t in chunk])  # [H, W, n]
            out[chunk] = np.moveaxis(dec, -1, 0).astype(bool)
        return out

    def present(self) -> np.ndarray:
        """bool ``[T]``: frames with a (non-None) mask."""
        return np.array([r is not None for r in self.rles], dtype=bool)

    def areas(self) -> np.ndarray:
        """int64 ``[T]`` pixel areas (0 where absent)."""
        out = np.zeros(self.num_frames, dtype=np.int64)
        idx = [t for t, r in enumerate(self.rles) if r is not None]
        out[idx] = rle_areas([coco_rle(self.rles[t]) for t in idx])
        return out

    def slice(self, start: int, stop: int) -> "MaskTube":
        return MaskTube(self.height, self.width, self.rles[start:stop])

    def to_json(self) -> dict:
        return {"size": [self.height, self.width], "rles": self.rles}

    @classmethod
    def from_json(cls, d: dict, *, where: str = "tube") -> "MaskTube":
        try:
            h, w = d["size"]
            rles = d["rles"]
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(where, f"tube needs 'size' [H, W] and 'rles': {e}") from None
        return cls(height=int(h), width=int(w), rles=list(rles))


# --------------------------------------------------------------------------- graph


@dataclass
class ObjectTrack:
    """One object (thing or stuff) and its mask tube.

    ``category`` is free text (open vocabulary). ``frame_categories`` optionally
    holds a per-frame label (predicted tubes from per-frame segmenters); metrics
    that need one label take their majority vote. ``score`` is a prediction's
    confidence.
    """

    object_id: int
    category: str
    is_thing: bool = True
    tube: MaskTube | None = None
    frame_categories: list[str | None] | None = None
    score: float | None = None
    attributes: dict[str, Any] = field(default_factory=dict)

    def majority_category(self) -> str:
        if self.frame_categories:
            votes = Counter(c for c in self.frame_categories if c is not None)
            if votes:
                # ties broken by first occurrence, so the answer is deterministic
                best = max(votes.values())
                for c in self.frame_categories:
                    if c is not None and votes[c] == best:
                        return c
        return self.category

    def to_json(self) -> dict:
        d: dict[str, Any] = {"object_id": self.object_id, "category": self.category, "is_thing": self.is_thing}
        if self.tube is not None:
            d["tube"] = self.tube.to_json()
        if self.frame_categories is not None:
            d["frame_categories"] = self.frame_categories
        if self.score is not None:
            d["score"] = self.score
        if self.attributes:
            d["attributes"] = self.attributes
        return d

    @classmethod
    def from_json(cls, d: dict, *, where: str = "object") -> "ObjectTrack":
        try:
            return cls(
                object_id=int(d["object_id"]),
                category=str(d["category"]),
                is_thing=bool(d.get("is_thing", True)),
                tube=MaskTube.from_json(d["tube"], where=where) if d.get("tube") is not None else None,
                frame_categories=d.get("frame_categories"),
                score=None if d.get("score") is None else float(d["score"]),
                attributes=dict(d.get("attributes") or {}),
            )
        except KeyError as e:
            raise DataError(where, f"missing field {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise DataError(where, f"malformed object: {e}") from None


@dataclass
class Relation:
    """``<subject, predicate, object>`` holding during inclusive frame ``spans``."""

    subject_id: int
    object_id: int
    predicate: str
    spans: list[Span] = field(default_factory=list)
    score: float | None = None

    def frames(self) -> np.ndarray:
        """Sorted unique frame indices covered by the spans."""
        if not self.spans:
            return np.zeros(0, dtype=np.int64)
        return np.unique(np.concatenate([np.arange(a, b + 1) for a, b in self.spans]))

    def to_json(self) -> dict:
        d: dict[str, Any] = {
            "subject_id": self.subject_id,
            "object_id": self.object_id,
            "predicate": self.predicate,
            "spans": [[int(a), int(b)] for a, b in self.spans],
        }
        if self.score is not None:
            d["score"] = self.score
        return d

    @classmethod
    def from_json(cls, d: dict, *, where: str = "relation") -> "Relation":
        try:
            return cls(
                subject_id=int(d["subject_id"]),
                object_id=int(d["object_id"]),
                predicate=str(d["predicate"]),
                spans=[(int(a), int(b)) for a, b in d.get("spans", [])],
                score=None if d.get("score") is None else float(d["score"]),
            )
        except KeyError as e:
            raise DataError(where, f"missing field {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise DataError(where, f"malformed relation: {e}") from None


def merge_spans(spans: Iterable[Span]) -> list[Span]:
    """Sort and merge overlapping or touching inclusive spans."""
    out: list[list[int]] = []
    for a, b in sorted((int(a), int(b)) for a, b in spans):
        if out and a <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def spans_from_mask(frames: np.ndarray, *, min_len: int = 1) -> list[Span]:
    """Inclusive ``[start, end]`` runs of True in a bool ``[T]`` vector (runs shorter than ``min_len`` dropped)."""
    m = np.asarray(frames, dtype=bool)
    d = np.diff(np.concatenate([[0], m.astype(np.int8), [0]]))
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1) - 1
    return [(int(a), int(b)) for a, b in zip(starts, ends) if b - a + 1 >= min_len]


@dataclass
class SceneGraph4D:
    """One video's 4D panoptic scene graph (ground truth or prediction).

    For predictions, ``relations`` is a ranked candidate list (highest score
    first after :meth:`ranked`); several predicates per pair are allowed.
    """

    video_id: str
    num_frames: int
    height: int
    width: int
    objects: list[ObjectTrack] = field(default_factory=list)
    relations: list[Relation] = field(default_factory=list)
    object_vocab: list[str] | None = None
    predicate_vocab: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    # -- access
    def object_by_id(self) -> dict[int, ObjectTrack]:
        return {o.object_id: o for o in self.objects}

    def ranked(self) -> list[Relation]:
        """Relations sorted by descending score (stable; unscored keep order, last)."""
        return sorted(
            self.relations, key=lambda r: -r.score if r.score is not None and not math.isnan(r.score) else math.inf
        )

    # -- validation
    def validate(self, where: str | Path | None = None, *, require_tubes: bool = False) -> "SceneGraph4D":
        """Raise :class:`DataError` naming ``where`` (a file) and the field on any inconsistency."""
        src = str(where) if where is not None else f"video {self.video_id!r}"
        ctx = f"video {self.video_id!r}"
        if self.num_frames <= 0:
            raise DataError(src, f"{ctx}: num_frames must be positive, got {self.num_frames}", field="num_frames")
        ids: set[int] = set()
        for i, o in enumerate(self.objects):
            f = f"objects[{i}]"
            if o.object_id in ids:
                raise DataError(src, f"{ctx}: duplicate object_id {o.object_id}", field=f)
            ids.add(o.object_id)
            if o.tube is None:
                if require_tubes:
                    raise DataError(src, f"{ctx}: object {o.object_id} has no mask tube", field=f)
                continue
            if (o.tube.height, o.tube.width) != (self.height, self.width):
                raise DataError(
                    src,
                    f"{ctx}: mask size {o.tube.height}x{o.tube.width} does not match video {self.height}x{self.width}",
                    field=f"{f}.tube",
                )
            if o.tube.num_frames != self.num_frames:
                raise DataError(
                    src,
                    f"{ctx}: mask tube has {o.tube.num_frames} frames, video has {self.num_frames}",
                    field=f"{f}.tube",
                )
            for t, r in enumerate(o.tube.rles):
                problem = None if r is None else rle_problem(r, self.height, self.width)
                if problem is not None:
                    raise DataError(src, f"{ctx}: {f}: object {o.object_id}: frame {t}: {problem}")
            if o.frame_categories is not None and len(o.frame_categories) != self.num_frames:
                raise DataError(src, f"{ctx}: frame_categories length != num_frames", field=f)
        for i, r in enumerate(self.relations):
            f = f"relations[{i}]"
            for role, oid in (("subject", r.subject_id), ("object", r.object_id)):
                if oid not in ids:
                    raise DataError(src, f"{ctx}: {role} id {oid} is not an object of this video", field=f)
            if not r.spans:
                # scored, it would be a quiet miss; a relation holds in at least one span
                raise DataError(src, f"{ctx}: relation <{r.subject_id}, {r.predicate}, {r.object_id}> has an empty"
                                     " span list", field=f)
            for a, b in r.spans:
                if a > b:
                    raise DataError(src, f"{ctx}: span [{a}, {b}] starts after it ends", field=f)
                if not (0 <= a <= b < self.num_frames):
                    raise DataError(
                        src, f"{ctx}: span [{a}, {b}] outside the video's frames [0, {self.num_frames - 1}]", field=f
                    )
            if r.score is not None and math.isnan(r.score):
                raise DataError(src, f"{ctx}: score is NaN", field=f)
        return self

    # -- JSON
    def to_json(self) -> dict:
        d: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "video_id": self.video_id,
            "num_frames": self.num_frames,
            "height": self.height,
            "width": self.width,
            "objects": [o.to_json() for o in self.objects],
            "relations": [r.to_json() for r in self.relations],
        }
        if self.object_vocab is not None:
            d["object_vocab"] = self.object_vocab
        if self.predicate_vocab is not None:
            d["predicate_vocab"] = self.predicate_vocab
        if self.meta:
            d["meta"] = self.meta
        return d

    @classmethod
    def from_json(cls, d: Any, *, where: str | Path = "scene graph") -> "SceneGraph4D":
        where = str(where)
        if not isinstance(d, dict):
            raise DataError(where, f"a scene graph must be a JSON object, got {type(d).__name__}")
        try:
            vid = str(d["video_id"])
            g = cls(
                video_id=vid,
                num_frames=int(d["num_frames"]),
                height=int(d["height"]),
                width=int(d["width"]),
                # a missing list is an error, not an empty graph: it would silently score as one
                objects=[
                    ObjectTrack.from_json(o, where=f"{where}: video {vid!r}: objects[{i}]")
                    for i, o in enumerate(_json_list(d, "objects", where, vid))
                ],
                relations=[
                    Relation.from_json(r, where=f"{where}: video {vid!r}: relations[{i}]")
                    for i, r in enumerate(_json_list(d, "relations", where, vid))
                ],
                object_vocab=d.get("object_vocab"),
                predicate_vocab=d.get("predicate_vocab"),
                meta=dict(d.get("meta") or {}),
            )
        except KeyError as e:
            raise DataError(where, f"missing field {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise DataError(where, f"malformed scene graph: {e}") from None
        return g

    def save(self, path: str | Path) -> None:
        """Write atomically as JSON."""
        with atomic_path(path) as tmp:
            tmp.write_text(json_text(self.to_json(), path), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path, *, validate: bool = True) -> "SceneGraph4D":
        path = Path(path)
        d = read_json_file(path)
        g = cls.from_json(d, where=path)
        return g.validate(path) if validate else g


def _json_list(d: dict, key: str, where: str, vid: str) -> list:
    if key not in d:
        raise DataError(where, f"video {vid!r}: missing field {key!r} (write [] for none)")
    if not isinstance(d[key], list):
        raise DataError(where, f"video {vid!r}: {key!r} must be a list, got {type(d[key]).__name__}")
    return d[key]


# --------------------------------------------------------------------------- files


def read_json_file(path: Path) -> Any:
    """Parse one JSON file; DataError naming ``path`` when it is missing, malformed or not UTF-8."""
    if not path.exists():
        raise DataError(path, "file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(path, f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError:
        raise DataError(path, "not a UTF-8 text file") from None
