"""Where experiments write: checked before any long work starts."""

from __future__ import annotations

import os
from pathlib import Path

from psg4d.errors import ConfigError


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
