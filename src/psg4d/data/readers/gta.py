"""PSG4D-GTA (third-person RGB-D videos built from SAIL-VOS 3D): reader.

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
:data:`GTA_STUFF_CLASSES`). ``visible`` is read only when ``masks`` is absent:
stuff tubes are then empty, and the reader warns once.

Depth: SAIL-VOS stores ``depth = 6 * (z_ndc + 4e-5)``; when the frame's
``rage_matrices`` file exists, depth is converted to metric camera depth with
its ``P_inv`` (row-vector convention, as the public code); otherwise the
``.npy`` values are taken to be metres already (the convention of datasets
written in this layout by other tools).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from psg4d.data.readers._util import (
    TubeBuilder,
    as_int,
    expect,
    get_field,
    int_field,
    load_frames,
    load_npy,
    load_npz_key,
    merged_relations,
    parse_span,
    thing_stuff_classes,
)
from psg4d.data.readers.base import IndexedReader
from psg4d.data.schema import ObjectTrack, SceneGraph4D, Span, Video4D
from psg4d.errors import DataError

log = logging.getLogger(__name__)

INDEX_FILE = "sailvos3d.json"
IMAGE_DIR = "images"
DEPTH_DIR = "depth"
PANOPTIC_DIR = "masks"  # merge_masks.py output: things + stuff
THINGS_DIR = "visible"  # SAIL-VOS instance maps: things only
RAGE_DIR = "rage_matrices"
STUFF_OFFSET = 1000
DEFAULT_FPS = 5.0  # PSG4D-GTA is annotated at about 5 fps
NDC_SCALE, NDC_SHIFT = 6.0, 4e-5  # z_ndc = depth / 6 - 4e-5 (public generate_3d_data.py)

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
        objs: list[tuple[int, str, bool]] = []
        for j, o in enumerate(raw_objs):
            octx = f"{ctx}: object[{j}]"
            oid = int_field(o, "object_id", where, octx)
            cat = str(get_field(o, "category", where, ctx=octx))
            is_thing = cat not in self._stuff
            # merge_masks.py writes stuff as background value + 1000 and the annotation names it by that value
            expect(
                is_thing or oid > STUFF_OFFSET,
                where,
                f"{octx}: stuff object {cat!r} has object_id {oid}; a stuff id is its mask value "
                f"(background value + {STUFF_OFFSET}), so it must exceed {STUFF_OFFSET}",
            )
            objs.append((oid, cat, is_thing))

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
            ObjectTrack(object_id=oid, category=cat, is_thing=thing, tube=builder.tube(oid) if builder else None)
            for oid, cat, thing in objs
        ]
        triplets = []
        for j, r in enumerate(self._entry_list(e, "relations", ctx)):
            rctx = f"{ctx}: relations[{j}]"
            expect(isinstance(r, list) and len(r) == 4, where, f"{rctx}: expected [subject_id, predicate, object_id, [start, end]]")
            s = as_int(r[0], where, f"{rctx} subject")
            o = as_int(r[2], where, f"{rctx} object")
            triplets.append((s, o, self._predicate(r[1], rctx), _spans(r[3], where, rctx)))
        H, W = shape if shape else (0, 0)
        fps = float(self._entry_meta(video_id).get("fps", DEFAULT_FPS))
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
        video = Video4D(
            rgb=rgb,
            depth=np.stack(depths),
            fps=float(self._entry_meta(video_id).get("fps", DEFAULT_FPS)),
            frame_indices=np.array([int(s) for s in names], dtype=np.int64),
            video_id=video_id,
        )
        return video.validate(self._index_path)


def _spans(raw: Any, where: Path, rctx: str) -> list[Span]:
    """A relation's ``[start, end]`` or list of them."""
    expect(isinstance(raw, list) and len(raw) > 0, where, f"{rctx}: span must be [start, end] or [[start, end], ...]")
    return [parse_span(sp, where, rctx) for sp in (raw if isinstance(raw[0], list) else [raw])]


def ndc_depth_to_metres(depth: np.ndarray, p_inv: np.ndarray) -> np.ndarray:
    """SAIL-VOS depth -> metric camera depth (positive distance along the view axis).

    Pixels map to NDC as in the public code (x: -1..1 left to right, y: 1..-1
    top to bottom); points are row vectors, ``camera = ndc @ P_inv``.
    """
    H, W = depth.shape
    yy, xx = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    x = 2.0 / max(W - 1, 1) * xx - 1.0
    y = -2.0 / max(H - 1, 1) * yy + 1.0
    z = depth / NDC_SCALE - NDC_SHIFT
    ndc = np.stack([x, y, z, np.ones_like(z)], axis=-1).astype(np.float64)
    cam = ndc @ np.asarray(p_inv, dtype=np.float64)
    w = cam[..., 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        zc = np.where(np.abs(w) > 1e-12, cam[..., 2] / w, 0.0)
    return np.abs(zc).astype(np.float32)
