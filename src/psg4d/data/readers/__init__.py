"""Dataset readers and the format registry.

:data:`FORMATS` is the explicit table of format name -> reader class; each
class names its marker file (the annotation file at the dataset root that
identifies the format). :func:`open_dataset` picks the reader from the marker,
never from folder names.
"""

from __future__ import annotations

from pathlib import Path

from psg4d.data.readers.base import DatasetReader
from psg4d.data.readers.canonical import CanonicalReader
from psg4d.data.readers.gta import GTAReader
from psg4d.data.readers.hoi import HOIReader
from psg4d.data.readers.psg2d import PSGReader
from psg4d.data.readers.pvsg import PVSGReader
from psg4d.data.readers.vg import VGReader
from psg4d.errors import DataError

FORMATS: dict[str, type[DatasetReader]] = {
    "canonical": CanonicalReader,
    "psg4d-gta": GTAReader,
    "psg4d-hoi": HOIReader,
    "pvsg": PVSGReader,
    "psg": PSGReader,
    "vg": VGReader,
}


def known_formats() -> str:
    """``name (marker), ...`` for error messages and help texts."""
    return ", ".join(f"{name} ({' or '.join((cls.marker, *cls.alt_markers))})" for name, cls in FORMATS.items())


def detect_format(path: str | Path) -> str:
    """The format whose marker file is at the root of ``path``; DataError if none or several."""
    root = Path(path)
    if not root.exists():
        raise DataError(root, "dataset folder not found")
    if not root.is_dir():
        raise DataError(root, "not a folder; give the dataset's root folder")
    hits = [name for name, cls in FORMATS.items() if cls.marker_path(root) is not None]
    if not hits:
        raise DataError(root, f"no known dataset marker file found; known formats: {known_formats()}")
    if len(hits) > 1:
        raise DataError(
            root,
            f"ambiguous: marker files of several formats found ({', '.join(hits)}); pass --format "
            f"(known formats: {known_formats()})",
        )
    return hits[0]


def open_dataset(path: str | Path, format: str | None = None) -> DatasetReader:
    """Open the dataset at ``path`` (lazily: only its annotation index is read).

    ``format`` names an entry of :data:`FORMATS`; without it the format is
    detected from the marker file at the root.
    """
    root = Path(path)
    if format is None:
        format = detect_format(root)
    elif format not in FORMATS:
        raise DataError(root, f"unknown format {format!r}; known formats: {known_formats()}")
    cls = FORMATS[format]
    if cls.marker_path(root) is None:
        where = " or ".join((cls.marker, *cls.alt_markers))
        raise DataError(root / cls.marker, f"file not found (format {format} needs {where} under the dataset root)")
    return cls(root)


__all__ = [
    "FORMATS",
    "DatasetReader",
    "CanonicalReader",
    "GTAReader",
    "HOIReader",
    "PSGReader",
    "PVSGReader",
    "VGReader",
    "detect_format",
    "known_formats",
    "open_dataset",
]
