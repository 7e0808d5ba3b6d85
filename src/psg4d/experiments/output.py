"""Where experiments write (checked before any long work starts), and what they ran on."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import platform
from datetime import date
from pathlib import Path
from typing import Any, Callable

import torch

from psg4d.utils.io import atomic_write_json
from psg4d.utils.io import check_output_folder as check_writable_folder
from psg4d.utils.threads import available_cpus


log = logging.getLogger(__name__)


def check_output_folder(out: Path) -> Path:
    """``out`` as a writable folder (proved by a real write, then created); Psg4dError naming it otherwise."""
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
