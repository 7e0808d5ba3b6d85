"""Where experiments write (checked before any long work starts), and what they ran on."""

from __future__ import annotations

import os
import platform
from datetime import date
from pathlib import Path
from typing import Any

import torch

from psg4d.errors import ConfigError
from psg4d.utils.threads import available_cpus


def check_output_folder(out: Path) -> Path:
    """``out`` as a writable folder (created if missing); ConfigError naming it otherwise."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: --out must be a folder, but it is a file")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{out}: cannot create the output folder ({e.strerror})") from None
    if not os.access(out, os.W_OK):
        raise ConfigError(f"{out}: the output folder is not writable")
    return out


def machine_info() -> dict[str, Any]:
    """The CPU model, the CPUs this process may use, the library versions and today's date."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "available_cpus": available_cpus(), "torch": torch.__version__,
            "python": platform.python_version(), "date": date.today().isoformat()}
