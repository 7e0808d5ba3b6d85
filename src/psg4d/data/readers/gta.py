"""PSG4D-GTA (third-person RGB-D videos built from SAIL-VOS 3D): reader and writer.

Layout under the dataset root, as PSG4D's ``data/GTA`` scripts build it
(``rearrange_files.py`` cuts and renumbers the SAIL-VOS 3D frames from 0,
``merge_masks.py`` writes the panoptic maps)::

    sailvos3d.json                     annotation index (marker)
    images/<video>/<t:06d>.bmp         RGB frames
    depth/<video>/<t:06d>.npy          SAIL-VOS depth (see below)
    masks/<video>/<t:06d>.npy          panoptic id map: things and stuff
    visible/<video>/<t:06d>.npy        thing ids only (the input of merge_masks.py)
    rage_matrices/<video>/<t:06d>.npz  optional GTA camera matrices (``P_inv``)

Index::

    {"objects": {"thing": [...], "stuff": [...]},   # or a flat "object" list
     "split": {"train": [video ids], "val": [...]},
     "data": [{"video_id", "object": [{"object_id", "category"}],
               "relations": [[subject_id, predicate, object_id, [start, end]]],
               "meta": {"num_frames", "fps"?}}]}

The per-video object list key is singular (``object``), as in the public code.
The public file has no predicate list (no PSG4D code reads one): the predicates
are the names the relations use, in first-seen order; a ``predicate_classes``
(or ``predicates``) list is used where a file has one. Frame files are listed
and sorted by their number; the number becomes ``frame_indices`` and
``meta.num_frames`` must equal the count. Spans index the sorted frames and are
inclusive; a relation may also give a list of spans ``[[a, b], ...]``; repeated
triplets are merged into one relation.

Mask values: 0 is unlabelled; ``merge_masks.py`` keeps the thing ids of
``visible`` and fills the pixels where ``visible`` is 0 with the background
value + :data:`STUFF_OFFSET` (1000). An object's ``object_id`` is its mask
value for things and stuff alike (stuff ids are 1001, 1002, ...), so a thing 3
and the stuff 1003 (background value 3) stay two objects. An object is stuff
when its category is listed under ``objects.stuff`` (for a flat class list: in
:data:`GTA_STUFF_CLASSES`). An index that breaks this is refused, not renumbered:
a thing id outside 1..999 (from 1000 on the map holds stuff), a stuff id outside
1001..1255 (the 8-bit background value + 1000), a category in neither class
list. ``visible`` is read only when ``masks`` is absent:
stuff tubes are then empty, and the reader warns once.

Depth (:mod:`psg4d.data.readers.sailvos_depth`): SAIL-VOS stores
``depth = 6 * (z_ndc + 4e-5)``; when the frame's ``rage_matrices`` file exists,
depth is converted to metric camera depth with its ``P_inv`` (row-vector
convention, as the public code); otherwise the
``.npy`` values are taken to be metres already (the convention of datasets
written in this layout by other tools). The sky value ``24e-5`` (``z_ndc`` 0:
no surface) reads as depth 0, psg4d's "no depth here".

Where the public files are silent, an entry's ``meta`` may carry ``height``,
``width`` and a 3x3 ``intrinsics``, and an object ``attributes`` (a JSON
object, e.g. the synthetic world's descriptions); the public code ignores them.

Writer (:func:`write_gta_video`, :func:`write_gta_index`; the synthetic ``gta``
preset's layout): RGB as 24-bit BMP, depth as SAIL-VOS NDC values with a
per-frame ``rage_matrices`` ``P_inv`` built from the intrinsics (reversed-Z
infinite projection, so :func:`ndc_depth_to_metres` gives the metres back),
``visible`` (things) and ``masks`` (things + stuff) as uint16 maps, and object
ids by :func:`gta_object_ids`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Collection, Sequence

import numpy as np

from psg4d.data.readers._util import (
    TubeBuilder,
    as_int,
    checked_sample,
    expect,
    get_field,
    int_field,
    load_frames,
    load_npy,
    load_npz_key,
    merged_relations,
    paint_id_map,
    parse_span,
    safe_rel_path,
    save_image,
    save_npy,
    save_npz,
    thing_stuff_classes,
)
from psg4d.data.readers.base import IndexedReader
from psg4d.data.readers.sailvos_depth import (
    default_intrinsics,
    metres_to_ndc_depth,
    ndc_depth_to_metres,
    ndc_projection,
)
from psg4d.data.schema import ObjectTrack, Sample, SceneGraph4D, Span, Video4D
from psg4d.errors import DataError
from psg4d.utils.io import atomic_write_json

log = logging.getLogger(__name__)

INDEX_FILE = "sailvos3d.json"
IMAGE_DIR = "images"
DEPTH_DIR = "depth"
PANOPTIC_DIR = "masks"  # merge_masks.py output: things + stuff
THINGS_DIR = "visible"  # SAIL-VOS instance maps: things only
RAGE_DIR = "rage_matrices"
STUFF_OFFSET = 1000
DEFAULT_FPS = 5.0  # PSG4D-GTA is annotated at about 5 fps
MAX_BACKGROUND = 255  # background_masks are 8-bit: stuff ids run 1001..1255

# Stuff classes of the public PSG4D-GTA class list, for indexes with a flat class list.
GTA_STUFF_CLASSES = frozenset({"sky", "floor", "ceiling", "ground", "wall", "grass", "fence", "stair", "window"})


class GTAReader(IndexedReader):
    """Lazy reader of the PSG4D-GTA layout (see the module docstring)."""

    format_name = "psg4d-gta"
    marker = INDEX_FILE
    has_depth = True

    def _load_index(self, index: Any) -> None:
        where = self._index_path
        data = get_field(index, "data", where, types=list)
        objs = index.get("objects", index.get("object"))
        if isinstance(objs, dict):
            things, stuff = thing_stuff_classes(objs, where)
        elif isinstance(objs, list):
            things = [str(c) for c in objs if str(c) not in GTA_STUFF_CLASSES]
            stuff = [str(c) for c in objs if str(c) in GTA_STUFF_CLASSES]
        else:
            raise DataError(where, "needs 'objects' {thing: [...], stuff: [...]} (or a flat 'object' class list)")
        self._object_vocab = things + stuff
        self._stuff = set(stuff)
        self._entries = self._entries_by_id(data, "video_id", paths=True)
        preds = index.get("predicate_classes", index.get("predicates"))
        if preds is None:
            preds = self._predicates_in_relations()
        expect(isinstance(preds, list), where, "'predicate_classes' must be a list of predicate names")
        self._predicate_vocab = [str(p) for p in preds]
        self._splits = self._split_lists(index.get("split", index.get("splits")), field="split")
        self._frames_cache: dict[str, list[str]] = {}
        self._warned_things_only = False

    def _predicates_in_relations(self) -> list[str]:
        """The predicate names the relations use, in first-seen order."""
        seen: dict[str, None] = {}
        for vid, e in self._entries.items():
            for j, r in enumerate(self._entry_list(e, "relations", f"video {vid!r}")):
                expect(
                    isinstance(r, list) and len(r) == 4 and isinstance(r[1], str),
                    self._index_path,
                    f"video {vid!r}: relations[{j}]: expected [subject_id, predicate name, object_id, [start, end]] "
                    "(without a predicate list, predicates must be names)",
                )
                seen.setdefault(r[1])
        return list(seen)

    def _check_object_id(self, oid: int, cat: str, is_thing: bool, octx: str) -> None:
        """Refuse an object whose id cannot be its value in the panoptic ``masks`` map.

        The id is the object's mask value (PSG4D's ``generate_video.py:60`` draws ``mask == object_id``)
        and its class is looked up by name (``sailvos3d.py`` ``cates2id``). ``merge_masks.py:18-25``
        writes one uint16 map holding the thing ids of ``visible`` and, where ``visible`` is 0, the
        8-bit background value + 1000: so values 1..999 are things, 1001..1255 stuff, and 0 is
        unlabelled (``generate_video.py:58`` skips it). A thing at 1000 or above would be read as
        stuff (or share its pixels with a stuff object); none of these is renumbered, as the masks
        would then no longer match the annotation.
        """
        where = self._index_path
        expect(cat in self._object_vocab, where,
               f"{octx}: category {cat!r} (object_id {oid}) is in neither objects.thing nor objects.stuff")
        if is_thing:
            expect(
                0 < oid < STUFF_OFFSET,
                where,
                f"{octx}: thing object {cat!r} has object_id {oid}; thing ids are their 'visible' mask values "
                f"1..{STUFF_OFFSET - 1}: merge_masks.py stores stuff as background value + {STUFF_OFFSET} in the "
                "same map, and 0 is unlabelled",
            )
        else:
            expect(
                STUFF_OFFSET < oid <= STUFF_OFFSET + MAX_BACKGROUND,
                where,
                f"{octx}: stuff object {cat!r} has object_id {oid}; a stuff id is its mask value, the 8-bit "
                f"background value + {STUFF_OFFSET}, so it must be in {STUFF_OFFSET + 1}..{STUFF_OFFSET + MAX_BACKGROUND}",
            )

    def num_frames(self, video_id: str) -> int:
        T = self._indexed_num_frames(video_id)
        return T if T is not None else len(self._frame_names(video_id))

    def _mask_dir(self, video_id: str) -> Path:
        panoptic = self.root / PANOPTIC_DIR / video_id
        if panoptic.is_dir():
            return panoptic
        things = self.root / THINGS_DIR / video_id
        if things.is_dir():
            if not self._warned_things_only:
                self._warned_things_only = True
                log.warning(
                    "%s: no %s/%s (the panoptic maps of PSG4D's merge_masks.py); reading %s/, which holds things "
                    "only, so stuff objects get empty tubes (reported once for this dataset)",
                    self.root, PANOPTIC_DIR, video_id, THINGS_DIR,
                )
            return things
        raise DataError(panoptic, f"video {video_id!r}: mask folder not found (looked for {PANOPTIC_DIR}/ and {THINGS_DIR}/)")

    def _frame_names(self, video_id: str) -> list[str]:
        """Sorted frame stems from the mask folder (listing only; frames are not read)."""
        if video_id not in self._frames_cache:
            folder = self._mask_dir(video_id)
            stems = [p.stem for p in folder.iterdir() if p.suffix == ".npy"]
            for s in stems:
                expect(s.isdigit(), folder / f"{s}.npy", "mask file name must be a frame number")
            self._frames_cache[video_id] = sorted(stems, key=int)
        return self._frames_cache[video_id]

    def _checked_frames(self, video_id: str) -> list[str]:
        names = self._frame_names(video_id)
        expect(len(names) > 0, self._mask_dir(video_id), f"video {video_id!r}: no mask files")
        T = self._indexed_num_frames(video_id)
        if T is not None:
            expect(
                len(names) == T,
                self._mask_dir(video_id),
                f"video {video_id!r}: mask/frame count mismatch: {len(names)} mask files, index says {T} frames",
            )
        return names

    # -- per video
    def read_graph(self, video_id: str, *, with_masks: bool = True) -> SceneGraph4D:
        """The scene graph; ``with_masks=False`` reads the index only (mask files
        are listed, not read; tubes are ``None`` and the size is 0x0)."""
        e = self._entry(video_id)
        where = self._index_path
        ctx = f"video {video_id!r}"
        names = self._checked_frames(video_id)
        T = len(names)
        raw_objs = get_field(e, "object", where, ctx=ctx, types=list)
        objs: list[tuple[int, str, bool, dict]] = []
        for j, o in enumerate(raw_objs):
            octx = f"{ctx}: object[{j}]"
            oid = int_field(o, "object_id", where, octx)
            cat = str(get_field(o, "category", where, ctx=octx))
            is_thing = cat not in self._stuff
            self._check_object_id(oid, cat, is_thing, octx)
            extra = o.get("attributes") or {}
            expect(isinstance(extra, dict), where, f"{octx}: 'attributes' must be a JSON object")
            objs.append((oid, cat, is_thing, extra))

        mask_dir = self._mask_dir(video_id)
        builder: TubeBuilder | None = None
        shape: tuple[int, int] | None = None
        for t, stem in enumerate(names if with_masks else []):
            p = mask_dir / f"{stem}.npy"
            m = load_npy(p, what="mask")
            expect(m.ndim == 2, p, f"mask must be a 2-D object-id map, got shape {m.shape}")
            if shape is None:
                shape = m.shape
                builder = TubeBuilder([oid for oid, *_ in objs], num_frames=T, height=shape[0], width=shape[1])
            expect(m.shape == shape, p, f"mask shape mismatch: {m.shape} differs from frame 0's {shape}")
            builder.add_frame(t, m)

        objects = [
            ObjectTrack(
                object_id=oid, category=cat, is_thing=thing, tube=builder.tube(oid) if builder else None,
                attributes=dict(extra),
            )
            for oid, cat, thing, extra in objs
        ]
        triplets = []
        for j, r in enumerate(self._entry_list(e, "relations", ctx)):
            rctx = f"{ctx}: relations[{j}]"
            expect(isinstance(r, list) and len(r) == 4, where, f"{rctx}: expected [subject_id, predicate, object_id, [start, end]]")
            s = as_int(r[0], where, f"{rctx} subject")
            o = as_int(r[2], where, f"{rctx} object")
            triplets.append((s, o, self._predicate(r[1], rctx), _spans(r[3], where, rctx)))
        meta = self._entry_meta(video_id)
        if shape is None and "height" in meta and "width" in meta:  # index-only read: the size the index gives
            shape = tuple(as_int(meta[k], where, f"{ctx}: meta.{k}") for k in ("height", "width"))
        H, W = shape if shape else (0, 0)
        fps = float(meta.get("fps", DEFAULT_FPS))
        return self._graph(
            video_id, size=(T, H, W), objects=objects, relations=merged_relations(triplets), where=where, meta={"fps": fps}
        )

    def read_video(self, video_id: str) -> Video4D:
        names = self._checked_frames(video_id)
        rgb = load_frames(self.root / IMAGE_DIR / video_id / f"{stem}.bmp" for stem in names)  # [T, H, W, 3]
        depths = []
        for stem in names:
            dp = self.root / DEPTH_DIR / video_id / f"{stem}.npy"
            d = load_npy(dp, what="depth").astype(np.float32)
            expect(d.shape == rgb.shape[1:3], dp, f"depth shape {d.shape} does not match frame shape {rgb.shape[1:3]}")
            rage = self.root / RAGE_DIR / video_id / f"{stem}.npz"
            if rage.is_file():
                d = ndc_depth_to_metres(d, load_npz_key(rage, "P_inv", what="camera matrix"))
            depths.append(d)
        meta = self._entry_meta(video_id)
        intr = meta.get("intrinsics")
        video = Video4D(
            rgb=rgb,
            depth=np.stack(depths),
            intrinsics=None if intr is None else np.asarray(intr, dtype=np.float64),
            fps=float(meta.get("fps", DEFAULT_FPS)),
            frame_indices=np.array([int(s) for s in names], dtype=np.int64),
            video_id=video_id,
        )
        return video.validate(self._index_path)


def _spans(raw: Any, where: Path, rctx: str) -> list[Span]:
    """A relation's ``[start, end]`` or list of them."""
    expect(isinstance(raw, list) and len(raw) > 0, where, f"{rctx}: span must be [start, end] or [[start, end], ...]")
    return [parse_span(sp, where, rctx) for sp in (raw if isinstance(raw[0], list) else [raw])]


# --------------------------------------------------------------------------- writer

def gta_object_ids(objects: Sequence[ObjectTrack]) -> dict[int, int]:
    """``object_id -> id in the GTA layout`` (which is also the object's mask value).

    In order of precedence: a thing keeps an id in 1..999 and a stuff object one in 1001..1255
    (a GTA graph read back is written with the same ids); a stuff id in 1..255 is taken as its
    background value and becomes id + 1000, as ``merge_masks.py`` does (the synthetic floor 1 ->
    1001); any other id, or one already taken, gets the lowest free id of its range. Ties go to
    the earlier object.
    """
    lo_hi = {True: (1, STUFF_OFFSET - 1), False: (STUFF_OFFSET + 1, STUFF_OFFSET + MAX_BACKGROUND)}
    out: dict[int, int] = {}
    taken: set[int] = set()

    def claim(o: ObjectTrack, i: int | None) -> None:
        if o.object_id not in out and i is not None and i not in taken:
            out[o.object_id] = i
            taken.add(i)

    for o in objects:
        lo, hi = lo_hi[o.is_thing]
        claim(o, o.object_id if lo <= o.object_id <= hi else None)
    for o in objects:
        claim(o, o.object_id + STUFF_OFFSET if not o.is_thing and 1 <= o.object_id <= MAX_BACKGROUND else None)
    for o in objects:
        lo, hi = lo_hi[o.is_thing]
        claim(o, next((i for i in range(lo, hi + 1) if i not in taken), None))
        if o.object_id not in out:
            kind = "thing" if o.is_thing else "stuff"
            raise DataError(f"object {o.object_id}", f"no free {kind} id left in {lo}..{hi} of the PSG4D-GTA layout")
    return out


def _frame_stems(video: Video4D, where: str) -> list[str]:
    fidx = [int(i) for i in np.asarray(video.frame_indices)]
    ok = all(i >= 0 for i in fidx) and all(b > a for a, b in zip(fidx, fidx[1:]))
    expect(ok, where, "frame_indices must be increasing and non-negative: they name the frame files")
    return [f"{i:06d}" for i in fidx]


def write_gta_video(root: Path, sample: Sample, *, stuff_classes: Collection[str]) -> dict:
    """Write one video's frames, depth, camera matrices and id maps under ``root``; return its
    ``sailvos3d.json`` entry (ids by :func:`gta_object_ids`, relations renumbered with them).

    Only per-video files are written, so videos can be written from parallel worker processes;
    :func:`write_gta_index` writes the index at the end. The layout needs depth; an object is
    stuff exactly when its category is in ``stuff_classes`` (the reader decides by class).
    """
    root = Path(root)
    video, graph, vid, where = checked_sample(sample)
    T, H, W = video.num_frames, video.height, video.width
    expect(video.depth is not None, where, "the PSG4D-GTA layout needs depth; this video has none")
    expect(math.isfinite(float(video.fps)), where, f"fps must be finite, got {video.fps}")
    rel = safe_rel_path(vid, where)
    stems = _frame_stems(video, where)
    stuff = set(stuff_classes)
    for o in graph.objects:
        expect(o.is_thing != (o.category in stuff), where, f"object {o.object_id} ({o.category!r}) is "
               f"{'a thing' if o.is_thing else 'stuff'}, but the PSG4D-GTA layout tells stuff by class")  # fmt: skip
    ids = gta_object_ids(graph.objects)

    objects = []
    for o in graph.objects:
        entry: dict[str, Any] = {"object_id": ids[o.object_id], "category": o.category}
        if o.attributes:
            entry["attributes"] = dict(o.attributes)
        objects.append(entry)

    K = video.intrinsics if video.intrinsics is not None else default_intrinsics(H, W)
    p = ndc_projection(K, H, W)
    p_inv = np.linalg.inv(p)
    tubes = [(ids[o.object_id], o.tube) for o in graph.objects if o.tube is not None]
    for t, stem in enumerate(stems):
        save_image(root / IMAGE_DIR / rel / f"{stem}.bmp", video.rgb[t], fmt="BMP")
        save_npy(root / DEPTH_DIR / rel / f"{stem}.npy", metres_to_ndc_depth(video.depth[t], p))
        save_npz(root / RAGE_DIR / rel / f"{stem}.npz", P_inv=p_inv)
        # uint16, as ids >= 1000 need (merge_masks.py); thing ids are < 1000, stuff ids above
        panoptic = paint_id_map(((i, m.frame(t)) for i, m in tubes), (H, W), where=where, frame=t, dtype=np.uint16)
        save_npy(root / THINGS_DIR / rel / f"{stem}.npy", np.where(panoptic < STUFF_OFFSET, panoptic, 0))
        save_npy(root / PANOPTIC_DIR / rel / f"{stem}.npy", panoptic)

    # one span per entry, as the public file lists them
    relations = [
        [ids[r.subject_id], r.predicate, ids[r.object_id], [int(a), int(b)]] for r in graph.relations for a, b in r.spans
    ]
    meta: dict[str, Any] = {"num_frames": T, "fps": float(video.fps), "height": H, "width": W}
    if video.intrinsics is not None:
        meta["intrinsics"] = np.asarray(video.intrinsics, dtype=np.float64).tolist()
    return {"video_id": rel, "object": objects, "relations": relations, "meta": meta}


def write_gta_index(
    root: Path,
    entries: list[dict],
    *,
    thing_classes: Sequence[str],
    stuff_classes: Sequence[str],
    predicates: Sequence[str],
    splits: dict[str, list[str]],
) -> None:
    """Write ``sailvos3d.json`` (the marker, so it comes last: a half-written dataset is never
    detected). ``predicate_classes`` fixes the predicate order (the public file has none)."""
    root = Path(root)
    known = {str(e["video_id"]) for e in entries}
    for name, vids in splits.items():
        for v in vids:
            expect(str(v) in known, root / INDEX_FILE, f"split {name!r} names video {v!r} that has no entry")
    atomic_write_json(root / INDEX_FILE, {
        "objects": {"thing": list(thing_classes), "stuff": list(stuff_classes)},
        "predicate_classes": list(predicates),
        "split": {k: [str(v) for v in vids] for k, vids in splits.items()},
        "data": entries,
    })  # fmt: skip
