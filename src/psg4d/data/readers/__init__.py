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


# ``psg4d synth`` writes this beside its datasets (4d/, 2d/); the folder itself is no dataset
SYNTH_META = "synth_meta.json"
MAX_SUBFOLDERS = 64  # subfolders looked into for a hint when a folder holds no dataset


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
    hits = _formats_at(root)
    if not hits:
        hint = nested_datasets_hint(root)
        raise DataError(root, f"no known dataset marker file found; {hint or f'known formats: {known_formats()}'}")
    if len(hits) > 1:
        raise DataError(
            root,
            f"ambiguous: marker files of several formats found ({', '.join(hits)}); pass --format "
            f"(known formats: {known_formats()})",
        )
    return hits[0]


def _formats_at(root: Path) -> list[str]:
    return [name for name, cls in FORMATS.items() if cls.marker_path(root) is not None]


def nested_datasets_hint(root: str | Path) -> str | None:
    """Where to look instead when ``root`` holds datasets one folder down (a ``psg4d synth``
    output holds ``4d/`` and ``2d/``), or ``None``: the datasets of its subfolders and their formats."""
    root = Path(root)
    synth = (root / SYNTH_META).is_file()
    try:
        # a synth output's own folders first, the 4D set before the 2D images
        subs = [root / "4d", root / "2d"] if synth else sorted(p for p in root.iterdir() if p.is_dir())[:MAX_SUBFOLDERS]
    except OSError:
        return None
    found = [f"{sub} (format {fmts[0]})" for sub in subs if sub.is_dir() and len(fmts := _formats_at(sub)) == 1]
    if not found:
        return None
    if synth:
        return f"{root} is a psg4d synth output: inspect {' or '.join(found)}"
    return f"datasets found in subfolders: {', '.join(found)}"


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
        # a wrong format names the format that is there; a folder of datasets, its subfolders
        others = _formats_at(root) if root.is_dir() else []
        hint = f"the folder holds a {' and a '.join(others)} dataset" if others else None
        hint = hint or (nested_datasets_hint(root) if root.is_dir() else None)
        raise DataError(
            root / cls.marker,
            f"file not found (format {format} needs {where} under the dataset root)" + (f"; {hint}" if hint else ""),
        )
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
    "nested_datasets_hint",
    "open_dataset",
]
