"""Where experiments write (checked before any long work starts), and what they ran on."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import platform
from datetime import date
from pathlib import Path
from typing import Any, Callable

import torch

from psg4d.errors import Psg4dError
from psg4d.utils.io import atomic_write_json
from psg4d.utils.io import check_output_folder as check_writable_folder
from psg4d.utils.threads import available_cpus


log = logging.getLogger(__name__)


# Where an experiment's results record whether they came from a --quick run, by file: the
# records' own field, or the config saved beside them.
_QUICK_FLAGS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("{name}.json", ("quick",)),
    ("{name}_run.json", ("config", "quick")),
    ("{name}_features.json", ("config", "quick")),
)


def recorded_quick(out: Path, name: str) -> bool | None:
    """Whether the results of experiment ``name`` in ``out`` came from a ``--quick`` run (None: no
    results there, or none that say)."""
    for pattern, keys in _QUICK_FLAGS:
        path = out / pattern.format(name=name)
        try:
            node: Any = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, bool):
            return node
    return None


def check_output_folder(out: Path, *, name: str | None = None, quick: bool = False) -> Path:
    """``out`` as a writable folder (proved by a real write, then created); Psg4dError naming it otherwise.

    With ``name``: a ``quick`` run (toy sizes, meaningless numbers) is refused where the
    experiment's results from a full run (or results that do not say) already lie, such as the
    shipped ``bench/results`` that BENCHMARKS.md cites.
    """
    if quick and name is not None and (out / f"{name}.json").exists() and recorded_quick(out, name) is not True:
        raise Psg4dError(
            f"{out / f'{name}.json'}: holds the results of a full run; a --quick run does not replace them"
            " (give another --out)"
        )
    check_writable_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def machine_info() -> dict[str, Any]:
    """The CPU model, the CPUs this process may use, the library versions and today's date."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):  # no /proc/cpuinfo (not Linux): the platform's name stands
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "available_cpus": available_cpus(), "torch": torch.__version__,
            "python": platform.python_version(), "date": date.today().isoformat()}


def jsonable(obj: Any) -> Any:
    """Config values as JSON: paths as strings, tuples as lists (nested)."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return str(obj) if isinstance(obj, Path) else obj


def write_results(out: Path, name: str, records: list[dict[str, Any]], config: Any,
                  plot: Callable[[Path, list[dict[str, Any]]], None]) -> None:
    """An experiment's end: ``OUT/NAME.json`` (the records), ``OUT/NAME_run.json`` (machine and the
    config that ran) and the plot ``OUT/NAME.svg``."""
    atomic_write_json(out / f"{name}.json", records, indent=1)
    run = {"machine": machine_info(), "config": jsonable(dataclasses.asdict(config))}
    atomic_write_json(out / f"{name}_run.json", run, indent=1)
    plot(out / f"{name}.svg", records)
    log.info("wrote %s", out / f"{name}.json")
