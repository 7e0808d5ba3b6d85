"""A synthetic world built once: :func:`generate_or_reuse` writes it, or reuses the one already there.

``psg4d demo`` and the experiments build their worlds through it; the settings a world was made
with are kept in a stamp file (``to_dict`` of its :class:`~psg4d.data.synth.generate.SynthConfig`)
so a rerun knows whether the world there is the one asked for.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

from psg4d.config import to_dict
from psg4d.data.synth.generate import SynthConfig, generate
from psg4d.errors import ConfigError
from psg4d.utils.io import atomic_write_json

log = logging.getLogger(__name__)

#: the stamp's file name inside the world's folder (``psg4d demo`` wrote it first; the name is
#: kept so that worlds already built are reused)
WORLD_STAMP = "demo_synth_config.json"

#: what :func:`generate_or_reuse` does with a world already in the folder
Reuse = Literal["same_settings", "refuse_other", "any"]


def generate_or_reuse(
    config: SynthConfig, data_dir: str | Path, *, stamp: str | Path | None = None, reuse: Reuse = "same_settings",
    progress: bool = True,
) -> Path:
    """The world of ``config`` in ``data_dir`` (its ``4d`` and ``2d`` sets): reused, or synthesised
    by :func:`~psg4d.data.synth.generate.generate` and its settings written to ``stamp``
    (default ``data_dir/`` :data:`WORLD_STAMP`). Returns ``data_dir``.

    ``reuse``:

    * ``"same_settings"``: reused when ``stamp`` holds ``config``'s settings; otherwise synthesised
      again (an earlier world of the synthesiser in ``data_dir`` is replaced);
    * ``"refuse_other"``: the same, but an existing ``data_dir`` whose stamp holds other settings (or
      none) is refused with :class:`~psg4d.errors.ConfigError`, never replaced;
    * ``"any"``: a world already there (``data_dir/4d``) is reused whatever it was made with, so
      results recorded on it are never measured on another.
    """
    if reuse not in ("same_settings", "refuse_other", "any"):
        raise ConfigError(f"reuse must be 'same_settings', 'refuse_other' or 'any', got {reuse!r}")
    data_dir = Path(data_dir)
    stamp = data_dir / WORLD_STAMP if stamp is None else Path(stamp)
    wanted = json.loads(json.dumps(to_dict(config)))
    if (data_dir / "4d").exists() if reuse == "any" else _stamped(stamp) == wanted:
        log.info("reusing synthetic world in %s", data_dir)
        return data_dir
    if reuse == "refuse_other" and data_dir.exists():
        raise ConfigError(f"{data_dir}: holds a world made with other settings (see {stamp}); give another folder")
    summary = generate(config, data_dir, progress=progress)
    log.info("synthesised videos %s and images %s (%d frames in %.1fs)", summary.videos, summary.images,
             summary.frames, summary.seconds)
    atomic_write_json(stamp, wanted)
    return data_dir


def _stamped(stamp: Path) -> Any:
    """The settings ``stamp`` records (None: no stamp, or one that cannot be read)."""
    try:
        return json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None
