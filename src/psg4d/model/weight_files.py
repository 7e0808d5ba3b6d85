"""Where weight files are, and which ones they are.

Where (:func:`resolve_weight_paths`, applied when a model is built): the config
fields of :data:`WEIGHT_FIELDS` hold absolute paths, or paths relative to
``$PSG4D_WEIGHTS`` when that is set, else relative to the current directory; the
model keeps them absolute, so a checkpoint never depends on the directory it is
loaded from. Which (:func:`fingerprint`): a SHA-256 of the file, or of a folder's
files, that a checkpoint records for every frozen weight source it left out. A checkpoint's
own weights file is identified the same way, uncached (:func:`file_sha256`): every checkpoint
writer records it under :data:`WEIGHTS_SHA256` and every loader checks it
(:func:`check_file_sha256`), so damaged bytes are refused instead of loading as other weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

from psg4d.errors import CheckpointError
from psg4d.model.llm import LLM_SOURCES, cache_dir
from psg4d.utils.io import atomic_write_json

log = logging.getLogger(__name__)

# A folder holding pretrained weight files; relative weight paths are resolved against it,
# and a checkpoint whose recorded weight path is gone looks there for the file by name.
WEIGHTS_ENV = "PSG4D_WEIGHTS"


def _is_local_llm(name: Any) -> bool:
    return bool(name) and str(name) not in LLM_SOURCES


# Model-config fields that name local weight files/folders (dotted path -> is the value a
# local path?). ``llm.name`` is a built-in source ("tiny", "smollm2-135m") or a local folder.
WEIGHT_FIELDS: dict[str, Callable[[Any], bool]] = {
    "encoder.weights_path": lambda v: bool(v),
    "mask_decoder.weights_path": lambda v: bool(v),
    "llm.name": _is_local_llm,
}


def get_field(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part, None)
    return node


def replace_field(cfg: Any, dotted: str, value: Any) -> Any:
    head, _, rest = dotted.partition(".")
    if not rest:
        return dataclasses.replace(cfg, **{head: value})
    return dataclasses.replace(cfg, **{head: replace_field(getattr(cfg, head), rest, value)})


def resolve_weight_path(value: str) -> Path:
    """A configured weight path -> absolute: as is, under ``$PSG4D_WEIGHTS``, or under the cwd."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return p
    root = os.environ.get(WEIGHTS_ENV)
    return (Path(root).expanduser() / p).resolve() if root else p.resolve()


def resolve_weight_paths(cfg: Any) -> Any:
    """``cfg`` (a model config) with every local weight path of :data:`WEIGHT_FIELDS` made absolute."""
    for dotted, is_local in WEIGHT_FIELDS.items():
        value = get_field(cfg, dotted)
        if value is not None and is_local(value):
            cfg = replace_field(cfg, dotted, str(resolve_weight_path(str(value))))
    return cfg


def weight_field_of(cfg: Any, source: str) -> str | None:
    """The config field whose (resolved) value is ``source``; None for a built-in source."""
    for dotted, is_local in WEIGHT_FIELDS.items():
        value = get_field(cfg, dotted)
        if value is not None and is_local(value) and str(resolve_weight_path(str(value))) == source:
            return dotted
    return None


# ---------------------------------------------------------------------- identity

_FINGERPRINTS: dict[tuple, str] = {}

# The key under which a checkpoint's JSON (config.json, trainer.json) records the SHA-256 of the
# weights file beside it.
WEIGHTS_SHA256 = "weights_sha256"


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in 4 MiB blocks: weight files can outgrow memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def check_file_sha256(file: str | Path, recorded: Any, *, recorded_in: str | Path) -> None:
    """Refuse (CheckpointError naming ``file``) a weights file whose bytes no longer hash to
    ``recorded``, the digest ``recorded_in`` (a checkpoint's JSON) holds for it.

    Always hashed anew, never through :func:`fingerprint`'s cache: that cache trusts size and
    modification time, which damage in place (a bad disk, a partial copy over the file) can keep.
    ``recorded`` None is a checkpoint written before checkpoints recorded the digest: loaded as
    before, unverified.
    """
    file, recorded_in = Path(file), Path(recorded_in)
    if recorded is None:
        log.debug("%s: %s records no %s (an older checkpoint); loading it unverified",
                  file, recorded_in, WEIGHTS_SHA256)
        return
    if not isinstance(recorded, str) or len(recorded) != 64:
        raise CheckpointError(f"{recorded_in}: {WEIGHTS_SHA256} is {recorded!r}, not a SHA-256 hex digest")
    actual = file_sha256(file)
    if actual != recorded.lower():
        raise CheckpointError(
            f"{file}: corrupted or changed since it was saved: its sha256 hash differs from the one"
            f" {recorded_in.name} recorded ({actual[:12]}... != {recorded[:12]}...)"
        )


def _cache_file() -> Path:
    return cache_dir() / "fingerprints.json"


def fingerprint(source: str | Path) -> str:
    """SHA-256 of a weight file, or of a folder's files (relative names and contents).

    Hashing a 13 GB LLaMA folder takes a minute, so results are remembered per (path, size,
    modification time) in memory and in ``$PSG4D_CACHE/fingerprints.json``."""
    path = Path(source)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    if not files:
        raise FileNotFoundError(f"{path}: no weight file to fingerprint")
    key = (str(path), tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    if key in _FINGERPRINTS:
        return _FINGERPRINTS[key]
    disk_key = hashlib.sha256(json.dumps(key).encode()).hexdigest()
    try:
        cache: dict[str, str] = json.loads(_cache_file().read_text())
    except (OSError, ValueError):  # no cache yet, or a damaged one: rebuilt below
        cache = {}
    digest = cache.get(disk_key)
    if digest is None:
        if path.is_file():
            digest = file_sha256(path)
        else:
            h = hashlib.sha256()
            for f in files:
                h.update(f"{f.relative_to(path).as_posix()}\0{file_sha256(f)}\n".encode())
            digest = h.hexdigest()
        cache[disk_key] = digest
        try:
            atomic_write_json(_cache_file(), cache)
        except OSError as e:  # a read-only cache only costs time
            log.debug("cannot write the fingerprint cache: %s", e)
    _FINGERPRINTS[key] = digest
    return digest
