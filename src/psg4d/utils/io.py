"""Atomic file writing: nothing a user made is ever left half-written.

Write to a temporary file in the destination folder, fsync, then
``os.replace`` (atomic on POSIX). Folders are written to a temporary sibling
and renamed into place.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from psg4d.errors import Psg4dError

log = logging.getLogger(__name__)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp/mkdtemp create private (0600/0700) entries; outputs get the usual permissions.
_FILE_MODE = 0o666 & ~_umask()
_DIR_MODE = 0o777 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str | Path, *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is untouched.
    ``suffix`` lets writers that pick a format from the extension (imageio,
    safetensors) see the right one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, _FILE_MODE)
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(path: str | Path, data: bytes, *, fsync: bool = True) -> None:
    """``fsync=False`` for files inside a folder that is itself committed later
    (per-frame files of a dataset whose index is written last): the rename still
    makes each file all-or-nothing, without paying a disk flush per frame."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_text(obj: Any, path: str | Path, *, indent: int | None = None) -> str:
    """``obj`` as strict JSON; NaN and infinity (which JSON has no words for, and which other
    readers reject) raise Psg4dError naming ``path`` instead of being written."""
    try:
        return json.dumps(obj, indent=indent, allow_nan=False)
    except ValueError as e:
        raise Psg4dError(f"{path}: refusing to write a non-finite number (NaN or infinity) into JSON ({e})") from None


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = None) -> None:
    atomic_write_text(path, json_text(obj, path, indent=indent))


# What makes a folder an earlier output of a psg4d writer: every name in one of these sets is
# present at its top level. ``atomic_dir`` replaces an existing non-empty folder only when the old
# and the new folder share one set, so a user's folder is never deleted by a writer.
OUTPUT_MARKERS: tuple[tuple[str, ...], ...] = (
    ("synth_meta.json",),  # psg4d synth
    ("psg4d_dataset.json",),  # psg4d data convert
    ("config.json", "model.safetensors"),  # checkpoints, converted language models
)
_TMP_TAG = ".tmp"
# Temporaries are named after their writer (pid and host) so that a later run can tell a crashed
# writer's leftovers from a live one's; on a shared file system only the same host can tell.
_HOST = hashlib.sha1(socket.gethostname().encode("utf-8")).hexdigest()[:8]
_WRITER_RE = re.compile(r"(\d+)h([0-9a-f]{8})-")


def _writer_tag() -> str:
    return f"{os.getpid()}h{_HOST}-"


def output_kind(folder: Path) -> tuple[str, ...] | None:
    """The marker set ``folder`` carries (None: not a psg4d output)."""
    for names in OUTPUT_MARKERS:
        if all((folder / n).is_file() for n in names):
            return names
    return None


def _absolute(path: str | Path) -> Path:
    """``path`` made absolute without resolving links: ``--out .`` has a real parent (where the
    temporary goes) and a real name."""
    return Path(os.path.abspath(path))


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(path: str | Path) -> list[Path]:
    """Remove the temporary siblings of ``path`` left by writers that died (kill -9, power loss).

    Temporary folders carry their writer's pid; one whose process still runs is another writer
    at work and is left alone, so concurrent writers never lose their half-built output.
    """
    path = _absolute(path)
    removed: list[Path] = []
    if not path.parent.is_dir():
        return removed
    prefix = f".{path.name}{_TMP_TAG}"
    for entry in path.parent.glob(f"{glob.escape(prefix)}*-*"):
        m = _WRITER_RE.match(entry.name[len(prefix):])
        if m is None or m.group(2) != _HOST or _pid_alive(int(m.group(1))) or not entry.is_dir():
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
        log.info("removed %s, left by an interrupted writer of %s", entry, path)
    return removed


def move_aside(path: Path, *, reason: str = "--overwrite") -> Path:
    """Rename ``path`` to a fresh ``NAME.replaced-<UTC time>`` sibling and return the new name."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for i in range(1000):
        target = path.with_name(f"{path.name}.replaced-{stamp}" + (f"-{i}" if i else ""))
        if not target.exists():
            os.replace(path, target)
            log.warning("moved the existing %s aside to %s (%s)", path, target, reason)
            return target
    raise Psg4dError(f"{path}: cannot find a free name to move it aside")


def start_over(run_dir: str | Path, *, part: str | None = None, describes: tuple[str, ...] = ()) -> Path | None:
    """``--no-resume``: move an earlier training run aside so that a fresh one starts in its place.

    The whole ``run_dir`` moves to ``RUN.replaced-<UTC time>``; with ``part`` (one stage rerun on
    its own) only ``run_dir/part`` moves, within the run, and gets a copy of the run's
    ``describes`` files (its config), which the new run may rewrite. Nothing is deleted. Returns
    where the earlier run went (None: there was none)."""
    run_dir = Path(run_dir)
    target = run_dir / part if part else run_dir
    if not target.is_dir() or _is_empty_dir(target):
        return None
    moved = move_aside(target, reason="--no-resume: starting over")
    if part:
        for name in describes:
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, moved / name)
    return moved


def prepare_output_dir(
    path: str | Path, *, marker: tuple[str, ...], what: str, overwrite: bool = False,
    protect: tuple[Path, ...] = (),
) -> Path:
    """Check, before any work, that ``path`` can receive the output of ``what``.

    Refused (Psg4dError): a path that is or contains one of ``protect`` (the command's sources),
    an existing file, a non-empty folder that is not an earlier output of the same command (with
    ``overwrite`` it is moved aside, never deleted), and a parent that cannot be written. Leftover
    temporaries of crashed runs are removed.
    """
    path = _absolute(path)
    resolved = path.resolve()
    for src in protect:
        src = Path(src).resolve()
        if resolved == src or resolved in src.parents:
            raise Psg4dError(f"{path}: the output folder holds the source {src}; replacing it would delete the source")
        if src in resolved.parents:
            raise Psg4dError(f"{path}: the output folder is inside the source {src}; choose a folder outside it")
    if path.exists() and not path.is_dir():
        raise Psg4dError(f"{path}: exists and is not a folder")
    if path.is_dir() and not _is_empty_dir(path) and output_kind(path) != marker:
        if not overwrite:
            raise Psg4dError(
                f"{path}: folder is not empty and is not an earlier output of {what}; "
                "choose another --out, or pass --overwrite to move it aside"
            )
        move_aside(path)
    check_writable_dir(path.parent, for_path=path)
    clean_stale_temps(path)
    return path


def check_writable_dir(folder: str | Path, *, for_path: str | Path | None = None) -> None:
    """Prove a file can be made in ``folder`` (or, where it does not exist yet, in the nearest
    folder above it that does) with a real write: ``os.access`` says yes to root on read-only
    mounts. Psg4dError naming ``for_path`` (default ``folder``) if not; nothing is left behind."""
    name = for_path if for_path is not None else folder
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise Psg4dError(f"{name}: cannot write there: {probe} is a file, not a folder")
    try:
        tempfile.TemporaryFile(prefix=".psg4d-write-test.", dir=probe).close()  # created, then removed
    except OSError as e:
        raise Psg4dError(f"{name}: cannot write there ({e.strerror or e})") from None


def check_output_file(path: str | Path) -> None:
    """``path`` (a file a command will write) can be written: refused now, not after the work."""
    path = Path(path)
    if path.is_dir():
        raise Psg4dError(f"{path}: --out is a folder; give a file name (e.g. pred.json)")
    check_writable_dir(path.parent, for_path=path)


def check_output_folder(path: str | Path) -> None:
    """``path`` (a folder a command fills with files) can be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise Psg4dError(f"{path}: --out must be a folder (one file per input), but it is a file")
    check_writable_dir(path, for_path=path)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it takes the place of ``path``.

    An existing ``path`` is replaced only when it is empty or an earlier output of the same
    writer (``OUTPUT_MARKERS`` shared by the old and the new folder); anything else is refused
    with Psg4dError and both folders are kept. Commands call ``prepare_output_dir`` first, so a
    refusal normally comes before the work.
    """
    path = _absolute(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}{_TMP_TAG}{_writer_tag()}", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.chmod(tmp, _DIR_MODE)
    try:
        _swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive flock on ``folder`` itself: swaps into one folder happen one at a time, so a
    writer's check of the current output and its rename cannot interleave with another's."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _in_use(path: Path) -> bool:
    """An (empty) folder that cannot be renamed over without harm: the working directory
    (``--out .``: the user's shell would be left in a deleted folder) or a mount point."""
    try:
        return os.path.samefile(path, os.getcwd()) or os.path.ismount(path)
    except OSError:
        return False


def _move_entries(src: Path, dst: Path, *, first: set[str] = frozenset(), last: set[str] = frozenset()) -> None:
    """Move every entry of ``src`` into ``dst`` (a folder that stays where it is): the names in
    ``first`` before the others, those in ``last`` after them. Moving an output's marker files
    last in and first out means an interrupted move never looks like a finished output."""
    def order(e: Path) -> tuple[int, str]:
        return (0 if e.name in first else 2 if e.name in last else 1, e.name)

    for entry in sorted(src.iterdir(), key=order):
        os.replace(entry, dst / entry.name)


def _swap_in(tmp: Path, path: Path) -> None:
    kind = output_kind(tmp)
    old: Path | None = None
    try:
        with _locked(path.parent):
            if path.is_symlink() or (path.exists() and not path.is_dir()):
                raise Psg4dError(f"{path}: exists and is not a folder; not replaced")
            if path.is_dir() and not _is_empty_dir(path):
                if kind is None or output_kind(path) != kind:
                    raise Psg4dError(f"{path}: folder is not empty and is not an earlier output of this kind; not replaced")
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}{_TMP_TAG}{_writer_tag()}old-", dir=path.parent))
                if _in_use(path):  # emptied in place (markers first: no longer a finished output)
                    _move_entries(path, old, first=set(kind))
                else:
                    os.replace(path, old)
            if path.is_dir() and _in_use(path):
                _move_entries(tmp, path, last=set(kind or ()))
                tmp.rmdir()
            else:
                os.replace(tmp, path)
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
