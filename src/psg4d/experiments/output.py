"""Where experiments write (checked before any long work starts), and what they ran on."""

from __future__ import annotations

import contextlib
import platform
from datetime import date
from pathlib import Path
from typing import Any

import torch

from psg4d.utils.io import check_output_folder as check_writable_folder
from psg4d.utils.threads import available_cpus


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
