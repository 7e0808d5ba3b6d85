"""2D Panoptic Scene Graphs (OpenPSG ``psg.json``): reader and writer.

Layout (``Jingkang50/OpenPSG``): one annotation file ``psg.json`` (marker), at
the dataset root or, as OpenPSG lays it out (``data/psg/psg.json`` beside
``data/coco``), in ``psg/`` under the root::

    {"thing_classes": [...], "stuff_classes": [...], "predicate_classes": [...],
     "test_image_ids": [...],                 # OpenPSG's split; the rest is train
     "data": [{"file_name", "height", "width", "image_id", "pan_seg_file_name",
               "segments_info": [{"id", "category_id", "isthing", ...}],
               "relations": [[subject_idx, object_idx, predicate_idx], ...]}]}

``pan_seg_file_name`` is a COCO-panoptic PNG whose segment id is
``R + 256*G + 256**2*B``; ``category_id`` indexes ``thing_classes +
stuff_classes``; relation entries index ``segments_info`` and
``predicate_classes``. OpenPSG keeps images and panoptic PNGs under its COCO
folder (``train2017/...``, ``panoptic_train2017/...`` under ``data/coco``); file
names are resolved against the prefixes of :data:`IMAGE_PREFIXES` (relative to
the folder holding ``psg.json``), first hit wins.

A file split by ``test_image_ids`` alone (OpenPSG's own file) is read as
OpenPSG's ``PanopticSceneGraphDataset`` (``openpsg/datasets/psg.py``) yields it:

* images without relations are in no split (``psg.py:81-83`` drops them before
  splitting); they stay readable by id;
* a ``test`` image's relations are its distinct ``(subject, object, predicate)``
  triplets in first-seen order (``psg.py:239-254`` ``# Filter out dupes!``, test branch);
* a ``train`` image keeps one predicate per ``(subject, object)`` pair, drawn from
  that pair's listings (a predicate listed twice is twice as likely), as the train
  branch's ``np.random.choice``. OpenPSG re-draws on every load; here the draw is
  seeded by the image id, so every read of an image (a vocabulary pass, each rank,
  a resumed run) sees the same graph.

Opening such a file logs, per split, how many images were left out and how many
relation listings were merged away.

Where OpenPSG is silent this module fixes the rest:

* An explicit ``splits`` object ``{name: [image ids]}`` (written by
  :func:`write_psg_index`) takes precedence over ``test_image_ids``; with
  neither, every image is in the split ``all``. Such splits are taken as
  listed, images without relations included, and every image's repeated
  triplets are merged into one relation (no per-pair draw).
* A segment may carry ``object_id`` (written by :func:`write_psg_image`); when
  every segment of an image has one, it becomes the schema object id, else the
  segment's index in ``segments_info`` is.
* A segment may carry ``attributes`` (a JSON object, e.g. the synthetic world's
  ``{"description": ...}``): they become the schema object's attributes, beside
  ``segment_id``.
* Each image becomes a one-frame, depth-less scene graph whose relations span
  ``[[0, 0]]``; the schema video id is ``str(image_id)``.
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from psg4d.data.readers._util import (
    as_int,
    expect,
    get_field,
    int_field,
    load_image_array,
    merged_relations,
    paint_id_map,
    save_image,
)
from psg4d.data.readers.base import ImageReader
from psg4d.data.schema import MaskTube, ObjectTrack, Sample, SceneGraph4D, Video4D
from psg4d.errors import DataError
from psg4d.utils.io import atomic_write_json

log = logging.getLogger(__name__)

INDEX_FILE = "psg.json"
# Tried in order for image and panoptic file names (OpenPSG: data/psg/psg.json + data/coco/...).
IMAGE_PREFIXES = (".", "coco", "../coco")
IMAGE_DIR = "images"
PANOPTIC_DIR = "panoptic"


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """COCO panoptic PNG ``[H, W, 3]`` -> segment ids ``R + 256*G + 256**2*B``."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    ids = ids.astype(np.int64)
    return np.stack([ids % 256, (ids // 256) % 256, (ids // 65536) % 256], axis=-1).astype(np.uint8)


class PSGReader(ImageReader):
    """Lazy reader of OpenPSG's ``psg.json`` (see the module docstring)."""

    format_name = "psg"
    marker = INDEX_FILE
    alt_markers = (f"psg/{INDEX_FILE}",)

    def _load_index(self, index: Any) -> None:
        where = self._index_path
        data = get_field(index, "data", where, types=list)
        self._things = [str(c) for c in get_field(index, "thing_classes", where, types=list)]
        stuff = [str(c) for c in get_field(index, "stuff_classes", where, types=list)]
        self._object_vocab = self._things + stuff
        self._predicate_vocab = [str(c) for c in get_field(index, "predicate_classes", where, types=list)]
        self._entries = self._entries_by_id(data, "image_id", paths=False)
        # images whose relations keep one predicate per pair (OpenPSG's train split); empty unless
        # the file is split by test_image_ids alone
        self._one_predicate_per_pair: frozenset[str] = frozenset()
        if "splits" in index or "test_image_ids" not in index:
            self._splits = self._split_lists(index.get("splits"), field="splits")
        else:
            test = self._split_lists({"test": index["test_image_ids"]}, field="test_image_ids")["test"]
            test_set = set(test)
            self._splits = self._openpsg_splits({"train": [v for v in self._entries if v not in test_set], "test": test})
            self._one_predicate_per_pair = frozenset(self._splits["train"])

    def _openpsg_splits(self, splits: dict[str, list[str]]) -> dict[str, list[str]]:
        """OpenPSG's splits: images without relations left out (``psg.py:81-83``), and, per split,
        a log line saying how many were left out and how many relation listings the split's
        de-duplication merges away (see the module docstring), so a user sees what the file lost."""
        out: dict[str, list[str]] = {}
        for name, ids in splits.items():
            kept: list[str] = []
            listings = triplets = pairs = 0
            for v in ids:
                rels = self._relation_triples(self._entries[v], f"image {v!r}")
                if rels:
                    kept.append(v)
                    listings += len(rels)
                    triplets += len(set(rels))
                    pairs += len({(s, o) for s, o, _ in rels})
            out[name] = kept
            if name == "train":
                merged = (f"{listings - triplets} repeated triplet listings merged and {triplets - pairs} predicates "
                          "dropped from subject-object pairs with several (one drawn per pair)")  # fmt: skip
            else:
                merged = f"{listings - triplets} repeated triplet listings merged"
            log.info(
                "%s: split %r: %d of %d images have no relations and are left out, as OpenPSG's psg.py does; "
                "%d relations kept: %s",
                self._index_path, name, len(ids) - len(kept), len(ids),
                pairs if name == "train" else triplets, merged,
            )  # fmt: skip
        return out

    def _relation_triples(self, e: Any, ctx: str) -> list[tuple[int, int, int]]:
        """An entry's ``relations`` as ``(subject index, object index, predicate index)``; the
        indices are checked against the image's segments and predicates by :meth:`read_graph`."""
        where = self._index_path
        out = []
        for j, r in enumerate(self._entry_list(e, "relations", ctx)):
            rctx = f"{ctx}: relations[{j}]"
            expect(isinstance(r, list) and len(r) == 3, where, f"{rctx}: expected [subject_idx, object_idx, predicate_idx]")
            si, oi, pi = (as_int(v, where, rctx) for v in r)
            out.append((si, oi, pi))
        return out

    def _resolve(self, name: str) -> Path:
        base = self._index_path.parent
        for prefix in IMAGE_PREFIXES:
            p = base / prefix / name
            if p.is_file():
                return p
        return base / name

    def _size(self, e: dict, ctx: str) -> tuple[int, int]:
        return int_field(e, "height", self._index_path, ctx), int_field(e, "width", self._index_path, ctx)

    def read_graph(self, video_id: str, *, with_masks: bool = True) -> SceneGraph4D:
        """The scene graph; ``with_masks=False`` skips the panoptic PNG (tubes ``None``)."""
        e = self._entry(video_id)
        where = self._index_path
        ctx = f"image {video_id!r}"
        H, W = self._size(e, ctx)
        segs = get_field(e, "segments_info", where, ctx=ctx, types=list)
        seg_path = self._resolve(get_field(e, "pan_seg_file_name", where, ctx=ctx, types=str))
        id_map = None
        if with_masks:
            png = load_image_array(seg_path, what="panoptic segmentation")
            expect(png.ndim == 3 and png.shape[2] >= 3, seg_path, f"panoptic PNG must be RGB, got shape {png.shape}")
            expect(
                png.shape[:2] == (H, W),
                seg_path,
                f"mask shape mismatch: PNG is {png.shape[0]}x{png.shape[1]}, index says {H}x{W}",
            )
            id_map = rgb_to_id(png[..., :3])

        use_own_ids = bool(segs) and all(isinstance(s, dict) and "object_id" in s for s in segs)
        vocab = self._object_vocab
        objects: list[ObjectTrack] = []
        for j, s in enumerate(segs):
            sctx = f"{ctx}: segments_info[{j}]"
            sid = int_field(s, "id", where, sctx)
            cid = int_field(s, "category_id", where, sctx)
            expect(0 <= cid < len(vocab), where, f"{sctx}: category_id {cid} outside thing_classes + stuff_classes ({len(vocab)})")
            is_thing = bool(s["isthing"]) if "isthing" in s else cid < len(self._things)
            oid = as_int(s["object_id"], where, f"{sctx}.object_id") if use_own_ids else j
            tube = MaskTube.from_dense((id_map == sid)[None]) if id_map is not None else None
            extra = s.get("attributes") or {}
            expect(isinstance(extra, dict), where, f"{sctx}: 'attributes' must be a JSON object")
            objects.append(
                ObjectTrack(object_id=oid, category=vocab[cid], is_thing=is_thing, tube=tube,
                            attributes={**extra, "segment_id": sid})
            )  # fmt: skip

        rels = self._relation_triples(e, ctx)
        for j, (si, oi, pi) in enumerate(rels):  # every listing is checked, also those a draw below leaves out
            rctx = f"{ctx}: relations[{j}]"
            for role, k in (("subject", si), ("object", oi)):
                expect(0 <= k < len(objects), where, f"{rctx}: unknown {role} segment index {k} ({len(objects)} segments)")
            self._predicate(pi, rctx)
        if video_id in self._one_predicate_per_pair:
            rels = _one_predicate_per_pair(rels, video_id)
        # repeated triplets become one relation (OpenPSG's test split keeps the distinct ones)
        triplets = [(objects[si].object_id, objects[oi].object_id, self._predicate(pi, ctx), [(0, 0)]) for si, oi, pi in rels]
        return self._graph(
            video_id,
            size=(1, H, W),
            objects=objects,
            relations=merged_relations(triplets),
            where=where,
            meta={"file_name": e.get("file_name")},
        )

    def read_video(self, video_id: str) -> Video4D:
        e = self._entry(video_id)
        ctx = f"image {video_id!r}"
        p = self._resolve(get_field(e, "file_name", self._index_path, ctx=ctx, types=str))
        return self._image_video(video_id, p, self._size(e, ctx), "index")


def _one_predicate_per_pair(rels: list[tuple[int, int, int]], image_id: str) -> list[tuple[int, int, int]]:
    """One listing per ``(subject, object)`` pair, in first-seen pair order, its predicate drawn
    from the pair's listings: OpenPSG's train split (``psg.py:239-254`` ``# Filter out dupes!``:
    ``np.random.choice`` over the pair's predicates, repeats included). The generator is seeded
    by a stable hash of the image id (not ``hash()``, which changes per process)."""
    by_pair: dict[tuple[int, int], list[int]] = {}
    for s, o, p in rels:
        by_pair.setdefault((s, o), []).append(p)
    rng = np.random.default_rng(zlib.crc32(image_id.encode("utf-8")))
    return [(s, o, preds[int(rng.integers(len(preds)))]) for (s, o), preds in by_pair.items()]


# --------------------------------------------------------------------------- writer


def write_psg_image(
    root: Path,
    sample: Sample,
    *,
    image_id: int,
    thing_classes: list[str],
    stuff_classes: list[str],
    predicate_classes: list[str],
) -> dict:
    """Write one single-frame sample as ``images/<id>.jpg`` (q95) and a COCO
    panoptic PNG; return its ``psg.json`` entry (relations as index triples).

    Segment ids are ``k + 1`` for the k-th object (0 is COCO's void). Only the
    image's own files are written, so images can be written in parallel;
    :func:`write_psg_index` writes ``psg.json`` at the end.
    """
    root = Path(root)
    video, graph = sample.video, sample.graph
    where = f"image {image_id} (video {graph.video_id!r})"
    video.validate(where)
    graph.validate(where)
    expect(video.num_frames == 1 and graph.num_frames == 1, where, f"PSG images are single-frame, got {video.num_frames} frames")
    expect((graph.height, graph.width) == (video.height, video.width), where, "scene graph and image sizes differ")
    thing_idx = {c: i for i, c in enumerate(thing_classes)}
    stuff_idx = {c: len(thing_classes) + i for i, c in enumerate(stuff_classes)}
    pred_idx = {p: i for i, p in enumerate(predicate_classes)}

    segs: list[dict] = []
    masks: list[tuple[int, np.ndarray]] = []
    index_of: dict[int, int] = {}
    for k, o in enumerate(graph.objects):
        table = thing_idx if o.is_thing else stuff_idx
        if o.category not in table:
            kind = "thing_classes" if o.is_thing else "stuff_classes"
            raise DataError(where, f"object {o.object_id}: category {o.category!r} is not in {kind}")
        m = o.tube.frame(0) if o.tube is not None else np.zeros((video.height, video.width), dtype=bool)
        sid = k + 1
        ys, xs = np.nonzero(m)
        bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)] if len(xs) else [0, 0, 0, 0]
        seg = {
            "id": sid,
            "category_id": table[o.category],
            "iscrowd": 0,
            "isthing": int(o.is_thing),
            "area": int(m.sum()),
            "bbox": bbox,
            "object_id": o.object_id,
        }
        extra = {k: v for k, v in o.attributes.items() if k not in ("segment_id", "mask_id")}
        if extra:  # the reader's own keys are left out: they are derived from the files
            seg["attributes"] = extra
        segs.append(seg)
        masks.append((sid, m))
        index_of[o.object_id] = k
    id_map = paint_id_map(masks, (video.height, video.width), where=where, frame=0, dtype=np.int64)

    relations = []
    for r in graph.relations:
        if r.predicate not in pred_idx:
            raise DataError(where, f"predicate {r.predicate!r} is not in predicate_classes")
        relations.append([index_of[r.subject_id], index_of[r.object_id], pred_idx[r.predicate]])

    file_name = f"{IMAGE_DIR}/{image_id:012d}.jpg"
    seg_name = f"{PANOPTIC_DIR}/{image_id:012d}.png"
    save_image(root / file_name, video.rgb[0], fmt="JPEG", quality=95, subsampling=0)
    save_image(root / seg_name, id_to_rgb(id_map), fmt="PNG")
    return {
        "file_name": file_name,
        "height": video.height,
        "width": video.width,
        "image_id": str(image_id),
        "pan_seg_file_name": seg_name,
        "segments_info": segs,
        "relations": relations,
    }


def write_psg_index(
    root: Path,
    entries: list[dict],
    *,
    thing_classes: list[str],
    stuff_classes: list[str],
    predicate_classes: list[str],
    splits: dict[str, list[int]],
) -> None:
    """Write ``psg.json`` atomically: explicit ``splits`` plus OpenPSG's
    ``test_image_ids`` (the ``test`` split, when there is one)."""
    root = Path(root)
    known = {str(e["image_id"]) for e in entries}
    out_splits = {}
    for name, ids in splits.items():
        out_splits[name] = [str(v) for v in ids]
        for v in out_splits[name]:
            if v not in known:
                raise DataError(root / INDEX_FILE, f"split {name!r} names image {v!r} that has no entry")
    atomic_write_json(
        root / INDEX_FILE,
        {
            "thing_classes": list(thing_classes),
            "stuff_classes": list(stuff_classes),
            "predicate_classes": list(predicate_classes),
            "test_image_ids": out_splits.get("test", []),
            "splits": out_splits,
            "data": entries,
        },
    )
