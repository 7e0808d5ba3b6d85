"""Visual Genome (scene graphs with boxes): reader. Single-frame, RGB only.

Layout (the VG v1.4 release files)::

    relationships.json   [{"image_id", "relationships": [{"relationship_id", "predicate",
                           "subject": {"object_id", "name", ...}, "object": {...}}]}]   (marker)
    objects.json         [{"image_id", "objects": [{"object_id", "x", "y", "w", "h",
                                                    "names": [...] | "name"}]}]
    image_data.json      [{"image_id" | "id", "url", "width", "height", ...}]   (optional)
    VG_100K/<image_id>.jpg, VG_100K_2/<image_id>.jpg

An image's folder is the one its ``url`` names (``.../rak248/VG_100K_2/1.jpg``);
without a url (or without ``image_data.json``) both folders are searched.

An object is named by the first of ``names`` (or ``name``), stripped and
lower-cased; predicates likewise (VG mixes "ON" and "on"). Synsets are ignored.
Boxes ``x, y, w, h`` (pixels) become box masks clipped to the image, so tubes
are boxes, not segmentations. The objects of an image are its ``objects.json``
list; a relationship whose subject or object is not in that list is dropped
(the VG driver skips them too: "some data is missing in this way") and counted
in the graph's ``meta["relations_dropped_missing_object"]``. Image sizes come
from ``image_data.json``, else from the image file's header. Each image is a
one-frame scene graph with spans ``[[0, 0]]``; there is one split, ``all``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from psg4d.data.readers._util import as_int, expect, get_field, int_field, merged_relations, read_json
from psg4d.data.readers.base import ImageReader
from psg4d.data.schema import MaskTube, ObjectTrack, SceneGraph4D, Video4D
from psg4d.errors import DataError

RELATIONSHIPS_FILE = "relationships.json"
OBJECTS_FILE = "objects.json"
IMAGE_DATA_FILE = "image_data.json"
IMAGE_DIRS = ("VG_100K", "VG_100K_2")
_URL_DIR = re.compile(r"(VG_100K(?:_2)?)/[0-9]+\.jpg$")
DROPPED_MISSING_OBJECT = "relations_dropped_missing_object"


def _norm(s: Any) -> str:
    return " ".join(str(s).strip().lower().split())


def _image_id(d: Any, where: Path, ctx: str) -> str:
    expect(isinstance(d, dict), where, f"{ctx}: expected a JSON object")
    key = "image_id" if "image_id" in d else "id"
    return str(as_int(get_field(d, key, where, ctx=ctx), where, f"{ctx}.{key}"))


class VGReader(ImageReader):
    """Reader of the Visual Genome release files (see the module docstring).
    Its entries are the image ids; it has one split, ``all``."""

    format_name = "vg"
    masks_are_boxes = True
    marker = RELATIONSHIPS_FILE

    def _load_index(self, rels: Any) -> None:
        rel_path = self._index_path
        expect(isinstance(rels, list), rel_path, "expected a list of {image_id, relationships}")
        self._rels: dict[str, list] = {}
        for i, e in enumerate(rels):
            iid = _image_id(e, rel_path, f"[{i}]")
            self._rels[iid] = get_field(e, "relationships", rel_path, ctx=f"[{i}]", types=list)
        self._objs: dict[str, list] = {}
        self._obj_path = self.root / OBJECTS_FILE
        data = read_json(self._obj_path)  # required: it is the image's object list
        expect(isinstance(data, list), self._obj_path, "expected a list of {image_id, objects}")
        for i, e in enumerate(data):
            iid = _image_id(e, self._obj_path, f"[{i}]")
            self._objs[iid] = get_field(e, "objects", self._obj_path, ctx=f"[{i}]", types=list)
        self._sizes: dict[str, tuple[int, int]] = {}
        self._dirs: dict[str, str] = {}
        size_path = self.root / IMAGE_DATA_FILE
        if size_path.exists():
            data = read_json(size_path)
            expect(isinstance(data, list), size_path, "expected a list of {image_id, url, width, height}")
            for i, e in enumerate(data):
                iid = _image_id(e, size_path, f"[{i}]")
                self._sizes[iid] = (int_field(e, "height", size_path, f"[{i}]"), int_field(e, "width", size_path, f"[{i}]"))
                hit = _URL_DIR.search(str(e.get("url") or ""))
                if hit:
                    self._dirs[iid] = hit.group(1)
        self._entries = dict.fromkeys([*self._rels, *self._objs])
        self._splits = {"all": list(self._entries)}  # VG has no splits
        obj_names: dict[str, None] = {}
        preds: dict[str, None] = {}
        for iid in self._entries:
            for o in self._objs.get(iid, []):
                obj_names.setdefault(self._name(o, self._obj_path, iid))
            listed = self._listed_ids(iid)
            for j, r in enumerate(self._rels.get(iid, [])):
                if all(oid in listed for oid in self._rel_ids(r, iid, j)):
                    preds.setdefault(_norm(get_field(r, "predicate", rel_path, ctx=f"image {iid}")))
        self._object_vocab = sorted(obj_names)
        self._predicate_vocab = sorted(preds)

    def _listed_ids(self, iid: str) -> set[int]:
        where = self._obj_path
        return {
            as_int(get_field(o, "object_id", where, ctx=f"image {iid}"), where, f"image {iid}: object_id")
            for o in self._objs.get(iid, [])
        }

    def _rel_ids(self, r: Any, iid: str, j: int) -> tuple[int, int]:
        """A relationship's ``(subject, object)`` object ids."""
        where, rctx = self._index_path, f"image {iid}: relationships[{j}]"
        s, o = (get_field(r, role, where, ctx=rctx, types=dict) for role in ("subject", "object"))
        return int_field(s, "object_id", where, f"{rctx}.subject"), int_field(o, "object_id", where, f"{rctx}.object")

    @staticmethod
    def _name(o: Any, where: Path, iid: str) -> str:
        expect(isinstance(o, dict), where, f"image {iid}: object must be a JSON object")
        names = o.get("names")
        if isinstance(names, list) and names:
            return _norm(names[0])
        if "name" in o:
            return _norm(o["name"])
        raise DataError(where, f"image {iid}: object {o.get('object_id', '?')} has no 'names' or 'name'")

    def _image_path(self, video_id: str) -> Path:
        if video_id in self._dirs:
            return self.root / self._dirs[video_id] / f"{video_id}.jpg"
        paths = [self.root / d / f"{video_id}.jpg" for d in IMAGE_DIRS]
        return next((p for p in paths if p.is_file()), paths[0])

    def image_size(self, video_id: str) -> tuple[int, int]:
        """``(height, width)`` from ``image_data.json``, else the image header (no decoding)."""
        self._entry(video_id)
        if video_id in self._sizes:
            return self._sizes[video_id]
        p = self._image_path(video_id)
        if not p.is_file():
            raise DataError(p, "missing frame file (and no image_data.json entry gives the size)")
        try:
            with Image.open(p) as im:
                w, h = im.size
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(p, f"cannot decode image: {e}") from None
        return h, w

    def read_graph(self, video_id: str, *, with_masks: bool = True) -> SceneGraph4D:
        """The scene graph with box masks; ``with_masks=False`` leaves tubes ``None``
        (and does not need the image size)."""
        self._entry(video_id)
        rel_path = self._index_path
        H, W = self.image_size(video_id) if with_masks else (0, 0)
        found: dict[int, tuple[str, Any, Path]] = {}
        for o in self._objs.get(video_id, []):
            oid = as_int(get_field(o, "object_id", self._obj_path, ctx=f"image {video_id}"), self._obj_path, "object_id")
            found.setdefault(oid, (self._name(o, self._obj_path, video_id), o, self._obj_path))
        triplets = []
        dropped = 0
        for j, r in enumerate(self._rels.get(video_id, [])):
            s, o = self._rel_ids(r, video_id, j)
            if s not in found or o not in found:
                dropped += 1
                continue
            triplets.append((s, o, _norm(r["predicate"]), [(0, 0)]))
        objects = []
        for oid, (name, o, src) in found.items():
            tube = None
            box = None
            if all(k in o for k in ("x", "y", "w", "h")):
                box = [as_int(o[k], src, f"image {video_id}: object {oid}.{k}") for k in ("x", "y", "w", "h")]
            if with_masks:
                m = np.zeros((H, W), dtype=bool)
                if box is not None:
                    x, y, w, h = box
                    m[max(y, 0) : min(y + h, H), max(x, 0) : min(x + w, W)] = True
                tube = MaskTube.from_dense(m[None])
            objects.append(
                ObjectTrack(object_id=oid, category=name, is_thing=True, tube=tube, attributes={"box_xywh": box} if box else {})
            )
        return self._graph(
            video_id,
            size=(1, H, W),
            objects=objects,
            relations=merged_relations(triplets),
            where=rel_path,
            meta={"box_masks": True, DROPPED_MISSING_OBJECT: dropped},
        )

    def read_video(self, video_id: str) -> Video4D:
        return self._image_video(video_id, self._image_path(video_id), self.image_size(video_id), "image_data.json")
