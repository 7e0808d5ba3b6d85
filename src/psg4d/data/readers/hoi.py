"""PSG4D-HOI (egocentric RGB-D videos built from HOI4D): reader and writer.

Layout under the dataset root, as used by the public PSG4D code
(``Jingkang50/PSG4D``, ``HOI/generate_video.py``)::

    psg4d_hoi.json      {"data": [entry, ...], "split": {name: [video ids]},
                         "predicate_classes": [...]}            (marker file)
    hoi4d_id.json       {short id: HOI4D relative path}
    categories.json     {"<class index>": class name}
    HOI4D_release/<path>/align_rgb/<t:05d>.jpg     RGB frames (written q95, 4:4:4)
    HOI4D_depth_video/<path>/align_depth/<t:05d>.png   16-bit depth, millimetres
    HOI4D_mask/<path>/mask/<t:05d>.npz             key "array": mask_id map,
                                                   stored TRANSPOSED as [W, H]

An entry: ``{"video_id": <HOI4D path>, "object": [{"object_id", "mask_id"}, ...],
"relations": [[subject_id, object_id, predicate, start, end], ...]}``. The
object key is singular, as in the public code. An object's class index is
``mask_id % 1000`` into ``categories.json``. Each relation entry holds one
inclusive span; several entries with the same triplet are several spans of one
relation. ``predicate`` is a name (public data) or an index into
``predicate_classes``.

Where the public code is silent this module fixes the layout:

* ``split`` (in ``psg4d_hoi.json``) lists short ids or HOI4D paths per split; a
  file without it has the single split ``all``.
* ``meta`` in an entry (``num_frames``, ``height``, ``width``, ``fps``,
  optional ``intrinsics`` 3x3 and ``frame_indices``) is written by
  :func:`write_hoi_video`; without it the frame count is the number of
  ``align_rgb`` files and the size comes from the first mask.
* An object may carry ``is_thing``; otherwise classes in :data:`HOI_STUFF_CLASSES`
  are stuff and everything else is a thing.
* An object may carry ``attributes`` (a JSON object, e.g. the synthetic world's
  ``{"description": "small red sphere"}``): they become the schema object's
  attributes, beside ``mask_id``.
* The schema's video id is the short id of ``hoi4d_id.json`` (the HOI4D path
  itself where the file has no short id for it).
* Depth sits where PSG4D's HOI README puts it, ``HOI4D_depth_video`` (frames
  decoded as HOI4D's ``utils/decode.py`` does: 16-bit PNG millimetres, 0 =
  invalid). Datasets written by psg4d before it followed that README keep
  depth in ``HOI4D_release/<path>/align_depth`` and are read from there. A video
  with neither folder is read RGB-only (``depth=None``) and the reader warns once
  per dataset; a folder with missing files is an error.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from psg4d.data.readers._util import (
    TubeBuilder,
    as_int,
    checked_sample,
    count_files,
    expect,
    get_field,
    int_field,
    load_frames,
    load_image_array,
    load_npz_key,
    merged_relations,
    paint_id_map,
    parse_span,
    read_json,
    safe_rel_path,
    save_image,
    save_npz,
)
from psg4d.data.readers.base import IndexedReader
from psg4d.data.schema import ObjectTrack, Sample, SceneGraph4D, Video4D
from psg4d.errors import DataError
from psg4d.utils.io import atomic_write_json

INDEX_FILE = "psg4d_hoi.json"
ID_FILE = "hoi4d_id.json"
CATEGORY_FILE = "categories.json"
RGB_ROOT = "HOI4D_release"
DEPTH_ROOT = "HOI4D_depth_video"
MASK_ROOT = "HOI4D_mask"
RGB_DIR = "align_rgb"
DEPTH_DIR = "align_depth"
MASK_DIR = "mask"
MASK_KEY = "array"
# mask_id = MASK_ID_STRIDE * instance + class index (the public code reads the class as mask_id % 1000)
MASK_ID_STRIDE = 1000
DEPTH_SCALE = 1000.0  # PNG units per metre (millimetres)
DEFAULT_FPS = 15.0  # HOI4D is captured at 15 fps

# Attributes a reader sets from the files themselves (never written back as attributes).
READER_ATTRIBUTES = frozenset({"mask_id", "segment_id"})

# HOI4D classes that are regions rather than countable objects.
HOI_STUFF_CLASSES = frozenset(
    {"no label", "noise", "ground", "void", "wall", "mural", "curtain", "carpet", "ceiling", "window", "pool"}
)


def _rgb_path(root: Path, rel: str, t: int) -> Path:
    return root / RGB_ROOT / rel / RGB_DIR / f"{t:05d}.jpg"


def _depth_path(root: Path, rel: str, t: int) -> Path:
    return root / DEPTH_ROOT / rel / DEPTH_DIR / f"{t:05d}.png"


def _depth_folders(root: Path, rel: str) -> list[Path]:
    """Where a video's depth may be: the public layout, then psg4d's earlier one."""
    return [root / DEPTH_ROOT / rel / DEPTH_DIR, root / RGB_ROOT / rel / DEPTH_DIR]


def _mask_path(root: Path, rel: str, t: int) -> Path:
    return root / MASK_ROOT / rel / MASK_DIR / f"{t:05d}.npz"


class HOIReader(IndexedReader):
    """Lazy reader of the PSG4D-HOI layout (see the module docstring)."""

    format_name = "psg4d-hoi"
    marker = INDEX_FILE
    has_depth = True

    def _load_index(self, index: Any) -> None:
        where = self._index_path
        data = get_field(index, "data", where, types=list)
        cat_path = self.root / CATEGORY_FILE
        # indexed by class (mask_id % 1000); unused indices are "" (never a valid class)
        self._object_vocab = _parse_categories(read_json(cat_path), cat_path)

        id_path = self.root / ID_FILE
        path_to_short: dict[str, str] = {}
        if id_path.exists():
            ids = read_json(id_path)
            expect(isinstance(ids, dict), id_path, "expected a JSON object {short id: HOI4D path}")
            path_to_short = {str(v): str(k) for k, v in ids.items()}

        # entries are keyed by short id; _paths maps it to the HOI4D path naming the files
        self._entries = {}
        self._paths: dict[str, str] = {}
        for i, e in enumerate(data):
            rel = safe_rel_path(get_field(e, "video_id", where, ctx=f"data[{i}]", types=str), where)
            short = path_to_short.get(rel) or str(e.get("hoi4d_id") or rel)
            if short in self._entries:
                raise DataError(where, f"data[{i}]: video {short!r} appears twice")
            self._entries[short] = e
            self._paths[short] = rel
        short_of_path = {rel: short for short, rel in self._paths.items()}

        raw_pred = index.get("predicate_classes", index.get("predicates"))
        if raw_pred is None:
            seen: dict[str, None] = {}
            for e in data:
                for r in e.get("relations", []) or []:
                    if isinstance(r, list) and len(r) == 5 and isinstance(r[2], str):
                        seen.setdefault(r[2])
            raw_pred = list(seen)
        expect(isinstance(raw_pred, list), where, "'predicate_classes' must be a list of names")
        self._predicate_vocab = [str(p) for p in raw_pred]

        # a split may list short ids or HOI4D paths
        def resolve(key: Any) -> str | None:
            key = str(key)
            return key if key in self._entries else short_of_path.get(key)

        self._splits = self._split_lists(index.get("split", index.get("splits")), field="split", resolve=resolve)

    def _rel(self, video_id: str) -> str:
        """The HOI4D path of a video (where its files are)."""
        self._entry(video_id)
        return self._paths[video_id]

    def num_frames(self, video_id: str) -> int:
        """Frame count from the index (``meta.num_frames``), else by listing ``align_rgb``."""
        T = self._indexed_num_frames(video_id)
        if T is not None:
            return T
        folder = self.root / RGB_ROOT / self._rel(video_id) / RGB_DIR
        n = count_files(folder, ".jpg")
        expect(n > 0, folder, f"video {video_id!r}: no frames found")
        return n

    # -- per video
    def read_graph(self, video_id: str, *, with_masks: bool = True) -> SceneGraph4D:
        """The scene graph; ``with_masks=False`` reads the index only (no mask
        files; tubes are ``None`` and the size is 0x0 unless the index has it)."""
        entry = self._entry(video_id)
        rel = self._rel(video_id)
        where = self._index_path
        ctx = f"video {video_id!r}"
        T = self.num_frames(video_id)
        meta = self._entry_meta(video_id)
        if with_masks:
            self._check_mask_count(rel, T, ctx)
        objects_meta = self._object_entries(entry, ctx)
        H = W = None
        if "height" in meta and "width" in meta:
            H = as_int(meta["height"], where, f"{ctx}: meta.height")
            W = as_int(meta["width"], where, f"{ctx}: meta.width")
        builder: TubeBuilder | None = None
        if with_masks:
            builder, H, W = self._mask_tubes(rel, T, H, W, [mid for _, mid, _, _, _ in objects_meta])
        objects = [
            ObjectTrack(
                object_id=oid,
                category=name,
                is_thing=thing,
                tube=builder.tube(mid) if builder is not None else None,
                attributes={**extra, "mask_id": mid},
            )
            for oid, mid, name, thing, extra in objects_meta
        ]
        return self._graph(
            video_id,
            size=(T, H or 0, W or 0),
            objects=objects,
            relations=merged_relations(self._relation_triplets(entry, ctx)),
            where=where,
            meta={"hoi4d_path": rel},
        )

    def _check_mask_count(self, rel: str, T: int, ctx: str) -> None:
        """One mask file per frame, or a DataError naming the mask folder."""
        mask_folder = self.root / MASK_ROOT / rel / MASK_DIR
        n_masks = count_files(mask_folder, ".npz")
        expect(
            n_masks == T,
            mask_folder,
            f"{ctx}: mask/frame count mismatch: {n_masks} mask files for {T} frames",
        )

    def _object_entries(self, entry: dict, ctx: str) -> list[tuple[int, int, str, bool, dict]]:
        """``(object_id, mask_id, category, is_thing, attributes)`` of each object of an index entry."""
        where = self._index_path
        categories = self._object_vocab
        raw_objects = get_field(entry, "object", where, ctx=ctx, types=list)
        objects_meta: list[tuple[int, int, str, bool, dict]] = []
        for j, o in enumerate(raw_objects):
            octx = f"{ctx}: object[{j}]"
            oid = int_field(o, "object_id", where, octx)
            mid = int_field(o, "mask_id", where, octx)
            cls = mid % MASK_ID_STRIDE
            if cls >= len(categories) or not categories[cls]:
                raise DataError(self.root / CATEGORY_FILE, f"{octx}: class index {cls} (mask_id {mid}) is not listed")
            name = categories[cls]
            is_thing = bool(o["is_thing"]) if "is_thing" in o else name not in HOI_STUFF_CLASSES
            extra = o.get("attributes") or {}
            expect(isinstance(extra, dict), where, f"{octx}: 'attributes' must be a JSON object")
            objects_meta.append((oid, mid, name, is_thing, extra))
        return objects_meta

    def _mask_tubes(
        self, rel: str, T: int, H: int | None, W: int | None, mask_ids: list[int]
    ) -> tuple[TubeBuilder | None, int | None, int | None]:
        """Read the ``T`` mask_id maps into tubes of ``mask_ids``; the size is the index's
        ``H x W`` when given (every mask must match it), else the first mask's."""
        builder: TubeBuilder | None = None
        for t in range(T):
            p = _mask_path(self.root, rel, t)
            arr = load_npz_key(p, MASK_KEY, what="mask")
            expect(arr.ndim == 2, p, f"mask must be a 2-D [W, H] array, got shape {arr.shape}")
            m = arr.T  # stored transposed ([W, H]) in the public data
            if H is None:
                H, W = m.shape
            expect(
                m.shape == (H, W),
                p,
                f"mask shape mismatch: transposed mask is {m.shape[0]}x{m.shape[1]}, video is {H}x{W}",
            )
            if builder is None:
                builder = TubeBuilder(mask_ids, num_frames=T, height=H, width=W)
            builder.add_frame(t, m)
        return builder, H, W

    def _relation_triplets(self, entry: dict, ctx: str) -> list[tuple[int, int, str, list[tuple[int, int]]]]:
        """``(subject, object, predicate, [span])`` per relation entry (one span each)."""
        where = self._index_path
        triplets = []
        for j, r in enumerate(self._entry_list(entry, "relations", ctx)):
            rctx = f"{ctx}: relations[{j}]"
            expect(isinstance(r, list) and len(r) == 5, where, f"{rctx}: expected [subject, object, predicate, start, end]")
            s = as_int(r[0], where, f"{rctx} subject")
            o = as_int(r[1], where, f"{rctx} object")
            triplets.append((s, o, self._predicate(r[2], rctx), [parse_span(r[3:5], where, rctx)]))
        return triplets

    def read_video(self, video_id: str) -> Video4D:
        rel = self._rel(video_id)
        T = self.num_frames(video_id)
        meta = self._entry_meta(video_id)
        rgb = load_frames(_rgb_path(self.root, rel, t) for t in range(T))  # [T, H, W, 3]
        depth = None
        folders = _depth_folders(self.root, rel)
        depth_folder = next((f for f in folders if f.is_dir()), None)
        if depth_folder is not None:
            maps = []
            for t in range(T):
                p = depth_folder / f"{t:05d}.png"
                d = load_image_array(p, what="depth")
                expect(d.shape == rgb.shape[1:3], p, f"depth shape {d.shape} does not match frame shape {rgb.shape[1:3]}")
                maps.append(d.astype(np.float32) / DEPTH_SCALE)
            depth = np.stack(maps)
        else:
            self._warn_no_depth(video_id, folders)
        intr = meta.get("intrinsics")
        fidx = meta.get("frame_indices")
        video = Video4D(
            rgb=rgb,
            depth=depth,
            intrinsics=None if intr is None else np.asarray(intr, dtype=np.float64),
            fps=float(meta.get("fps", DEFAULT_FPS)),
            frame_indices=None if fidx is None else np.asarray(fidx, dtype=np.int64),
            video_id=video_id,
        )
        return video.validate(self._index_path)


def _parse_categories(raw: Any, where: Path) -> list[str]:
    """``{"<index>": name}`` (public file) or a plain list -> list indexed by class.
    Unused indices between listed ones become empty strings (never a valid class)."""
    if isinstance(raw, list):
        return [str(c) for c in raw]
    expect(isinstance(raw, dict), where, "expected {class index: name} or a list of names")
    out: dict[int, str] = {}
    for k, v in raw.items():
        try:
            out[int(k)] = str(v)
        except ValueError:
            raise DataError(where, f"class index {k!r} is not an integer") from None
    cats = [""] * (max(out) + 1 if out else 0)
    for k, v in out.items():
        expect(k >= 0, where, f"negative class index {k}")
        cats[k] = v
    return cats


# --------------------------------------------------------------------------- writer


def write_hoi_video(root: Path, sample: Sample, *, categories: list[str], rel_path: str | None = None) -> dict:
    """Write one video's frames (JPEG q95), depth (16-bit PNG mm) and masks
    (transposed mask_id maps) under ``root``; return its ``psg4d_hoi.json`` entry.

    Only per-video files are written, so videos can be written from parallel
    worker processes; :func:`write_hoi_index` writes the shared index at the end.
    Overlapping masks are refused (a mask_id map holds one object per pixel).
    """
    root = Path(root)
    video, graph, vid, where = checked_sample(sample)
    expect(len(categories) <= MASK_ID_STRIDE, where, f"at most {MASK_ID_STRIDE} categories fit mask_id % {MASK_ID_STRIDE}")
    rel = safe_rel_path(rel_path if rel_path is not None else vid, where)
    cat_index = {c: i for i, c in enumerate(categories)}

    objects = []
    mask_ids: dict[int, int] = {}
    for k, o in enumerate(graph.objects):
        if o.category not in cat_index:
            raise DataError(where, f"object {o.object_id}: category {o.category!r} is not in categories")
        mid = MASK_ID_STRIDE * (k + 1) + cat_index[o.category]
        mask_ids[o.object_id] = mid
        entry = {"object_id": o.object_id, "mask_id": mid, "category": o.category, "is_thing": o.is_thing}
        extra = {k: v for k, v in o.attributes.items() if k not in READER_ATTRIBUTES}
        if extra:  # the reader's own keys are left out: they are derived from the files
            entry["attributes"] = extra
        objects.append(entry)

    T, H, W = video.num_frames, video.height, video.width
    for t in range(T):
        save_image(_rgb_path(root, rel, t), video.rgb[t], fmt="JPEG", quality=95, subsampling=0)
        if video.depth is not None:
            d = np.nan_to_num(video.depth[t], nan=0.0, posinf=0.0, neginf=0.0)
            mm = np.clip(np.round(d * DEPTH_SCALE), 0, np.iinfo(np.uint16).max).astype(np.uint16)
            save_image(_depth_path(root, rel, t), mm, fmt="PNG")
        id_map = paint_id_map(
            ((mask_ids[o.object_id], o.tube.frame(t)) for o in graph.objects if o.tube is not None),
            (H, W),
            where=where,
            frame=t,
            dtype=np.int32,
        )
        save_npz(_mask_path(root, rel, t), **{MASK_KEY: np.ascontiguousarray(id_map.T)})

    relations = [
        [r.subject_id, r.object_id, r.predicate, int(a), int(b)] for r in graph.relations for a, b in r.spans
    ]
    meta: dict[str, Any] = {"num_frames": T, "height": H, "width": W, "fps": float(video.fps)}
    if video.intrinsics is not None:
        meta["intrinsics"] = np.asarray(video.intrinsics, dtype=np.float64).tolist()
    fidx = np.asarray(video.frame_indices)
    if not np.array_equal(fidx, np.arange(T)):
        meta["frame_indices"] = [int(i) for i in fidx]
    if not math.isfinite(meta["fps"]):
        raise DataError(where, f"fps must be finite, got {video.fps}")
    return {"video_id": rel, "hoi4d_id": vid, "object": objects, "relations": relations, "meta": meta}


def write_hoi_index(
    root: Path,
    entries: list[dict],
    *,
    categories: list[str],
    predicates: list[str],
    splits: dict[str, list[str]],
) -> None:
    """Write ``psg4d_hoi.json``, ``hoi4d_id.json`` and ``categories.json`` atomically.

    ``splits`` lists short ids (the schema video ids). The marker file
    ``psg4d_hoi.json`` is written last, so a half-written dataset is never detected.
    """
    root = Path(root)
    known = {str(e.get("hoi4d_id", e.get("video_id"))) for e in entries}
    for name, ids in splits.items():
        for v in ids:
            if str(v) not in known:
                raise DataError(root / INDEX_FILE, f"split {name!r} names video {v!r} that has no entry")
    id_map = {str(e.get("hoi4d_id", e["video_id"])): e["video_id"] for e in entries}
    atomic_write_json(root / CATEGORY_FILE, {str(i): c for i, c in enumerate(categories)})
    atomic_write_json(root / ID_FILE, id_map)
    atomic_write_json(
        root / INDEX_FILE,
        {"data": entries, "split": {k: [str(v) for v in ids] for k, ids in splits.items()}, "predicate_classes": list(predicates)},
    )
