"""Small helpers shared by the format readers and writers.

Every helper turns a low-level failure (missing file, bad JSON, an image PIL
cannot decode) into a :class:`psg4d.errors.DataError` that names the file, so
that a user sees which file of a dataset is broken instead of a traceback.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from psg4d.data.masks import rle_encode
from psg4d.data.schema import MaskTube, Relation, Span, merge_spans
from psg4d.errors import DataError
from psg4d.utils.io import atomic_path, atomic_write_bytes


def read_json(path: Path) -> Any:
    """Parse a JSON file; DataError naming ``path`` if it is missing or malformed."""
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(path, f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError:
        raise DataError(path, "not a UTF-8 text file") from None


def expect(cond: bool, where: str | Path, problem: str, *, field: str | None = None) -> None:
    if not cond:
        raise DataError(where, problem, field=field)


def checked_sample(sample: Any) -> tuple[Any, Any, str, str]:
    """``(video, graph, video id, where)`` of a sample a writer is given, after checking that both
    are valid and the graph has the video's frames and size (a writer never writes a broken video)."""
    video, graph = sample.video, sample.graph
    vid = graph.video_id or video.video_id
    where = f"video {vid!r}"
    video.validate(where)
    graph.validate(where)
    shape = (video.num_frames, video.height, video.width)
    expect((graph.num_frames, graph.height, graph.width) == shape, where,
           f"scene graph is {graph.num_frames}x{graph.height}x{graph.width} but video is {'x'.join(map(str, shape))}")
    return video, graph, vid, where


def get_field(d: Any, key: str, where: str | Path, *, ctx: str = "", types: type | tuple = object) -> Any:
    """``d[key]`` with a DataError naming the file (and context) if absent or of the wrong type."""
    prefix = f"{ctx}: " if ctx else ""
    if not isinstance(d, dict):
        raise DataError(where, f"{prefix}expected a JSON object, got {type(d).__name__}")
    if key not in d:
        raise DataError(where, f"{prefix}missing field {key!r}")
    v = d[key]
    if not isinstance(v, types):
        names = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise DataError(where, f"{prefix}field {key!r} must be {names}, got {type(v).__name__}")
    return v


def as_int(v: Any, where: str | Path, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) and not (isinstance(v, float) and v.is_integer()):
        raise DataError(where, f"{what} must be an integer, got {v!r}")
    return int(v)


def thing_stuff_classes(objs: dict, where: str | Path) -> tuple[list[str], list[str]]:
    """The thing and stuff class lists of an ``objects: {"thing": [...], "stuff": [...]}`` index field."""
    return tuple([str(c) for c in get_field(objs, k, where, ctx="objects", types=list)] for k in ("thing", "stuff"))


def int_field(d: Any, key: str, where: str | Path, ctx: str) -> int:
    """``d[key]`` as an integer; DataError naming the file and ``ctx.key`` otherwise."""
    return as_int(get_field(d, key, where, ctx=ctx), where, f"{ctx}.{key}")


def parse_span(raw: Any, where: str | Path, rctx: str) -> Span:
    """One inclusive ``[start, end]`` span of a relation."""
    expect(isinstance(raw, list) and len(raw) == 2, where, f"{rctx}: span must be [start, end], got {raw!r}")
    start, end = as_int(raw[0], where, f"{rctx} start"), as_int(raw[1], where, f"{rctx} end")
    # checked here, before spans of one triplet are merged: a backwards span inside another would vanish
    expect(start <= end, where, f"{rctx}: span [{start}, {end}] starts after it ends")
    return start, end


def merged_relations(triplets: Iterable[tuple[int, int, str, Sequence[Span]]]) -> list[Relation]:
    """One relation per ``(subject, object, predicate)`` in first-seen order, with
    the spans of all its listings merged: formats list a triplet once per span."""
    grouped: dict[tuple[int, int, str], list[Span]] = {}
    for s, o, p, spans in triplets:
        grouped.setdefault((s, o, p), []).extend(spans)
    return [Relation(s, o, p, merge_spans(sp)) for (s, o, p), sp in grouped.items()]


def load_rgb(path: Path) -> np.ndarray:
    """An image file as uint8 ``[H, W, 3]``."""
    if not path.is_file():
        raise DataError(path, "missing frame file")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(path, f"cannot decode image: {e}") from None


def load_frames(paths: Iterable[Path], *, size: tuple[int, int] | None = None) -> np.ndarray:
    """The RGB frames of one video as uint8 ``[T, H, W, 3]``. Every frame must be
    ``size`` ``(H, W)`` as the index says, or without one, the size of frame 0."""
    frames: list[np.ndarray] = []
    for p in paths:
        img = load_rgb(p)
        if size is not None:
            expect(img.shape[:2] == size, p, f"frame is {img.shape[0]}x{img.shape[1]}, index says {size[0]}x{size[1]}")
        elif frames and img.shape != frames[0].shape:
            raise DataError(p, f"frame size {img.shape[:2]} differs from frame 0's {frames[0].shape[:2]}")
        frames.append(img)
    return np.stack(frames)


def load_image_array(path: Path, *, what: str = "image") -> np.ndarray:
    """An image file as stored (palette/indexed/16-bit kept as integers)."""
    if not path.is_file():
        raise DataError(path, f"missing {what} file")
    try:
        with Image.open(path) as im:
            return np.asarray(im)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(path, f"cannot decode {what}: {e}") from None


def load_npy(path: Path, *, what: str) -> np.ndarray:
    if not path.is_file():
        raise DataError(path, f"missing {what} file")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(path, f"cannot read {what} array: {e}") from None


def load_npz_key(path: Path, key: str, *, what: str) -> np.ndarray:
    if not path.is_file():
        raise DataError(path, f"missing {what} file")
    try:
        with np.load(path, allow_pickle=False) as z:
            if key not in z.files:
                raise DataError(path, f"{what} archive has no array {key!r} (has {sorted(z.files)})")
            return z[key]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(path, f"cannot read {what} archive: {e}") from None


def save_image(path: Path, arr: np.ndarray, *, fmt: str, **kwargs: Any) -> None:
    """Encode with PIL in memory, then write atomically (no per-file fsync: a
    dataset's frames are committed by the index file written last)."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kwargs)
    atomic_write_bytes(path, buf.getvalue(), fsync=False)


def save_npy(path: Path, arr: np.ndarray) -> None:
    """One array as ``.npy``, written atomically (no fsync, as :func:`save_image`)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue(), fsync=False)


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)


class TubeBuilder:
    """Builds mask tubes a frame at a time from panoptic id maps.

    Decoding a whole video of id maps at once would hold ``T*H*W`` integers
    (gigabytes at 1080p x 300 frames); one frame at a time keeps memory flat.
    """

    def __init__(self, ids: Sequence[int], *, num_frames: int, height: int, width: int):
        self.ids = [int(i) for i in ids]
        self.height, self.width = height, width
        self.rles: dict[int, list[dict | None]] = {i: [None] * num_frames for i in self.ids}

    def add_frame(self, t: int, id_map: np.ndarray) -> None:
        present = np.unique(id_map)
        for i in self.ids:
            if i in present:
                self.rles[i][t] = rle_encode(id_map == i)

    def tube(self, key: int) -> MaskTube:
        return MaskTube(height=self.height, width=self.width, rles=self.rles[key])


def paint_id_map(
    masks: Iterable[tuple[int, np.ndarray]], shape: tuple[int, int], *, where: str, frame: int, dtype: Any
) -> np.ndarray:
    """Paint binary masks into one id map; overlapping masks cannot be stored in
    a panoptic map, so they are refused instead of silently overwritten."""
    out = np.zeros(shape, dtype=dtype)
    for value, m in masks:
        if m.shape != shape:
            raise DataError(where, f"frame {frame}: mask shape {m.shape} differs from frame shape {shape}")
        clash = m & (out != 0)
        if clash.any():
            other = int(out[clash][0])
            raise DataError(
                where,
                f"frame {frame}: masks with ids {other} and {value} overlap; a panoptic id map holds one object per pixel",
            )
        out[m] = value
    return out


def count_files(folder: Path, suffix: str) -> int:
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.iterdir() if p.suffix == suffix)


def safe_rel_path(rel: str, where: str | Path) -> str:
    """Refuse absolute paths and ``..`` so a dataset cannot point outside its root."""
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts or not rel:
        raise DataError(where, f"video path {rel!r} must be relative and stay inside the dataset root")
    return p.as_posix()
