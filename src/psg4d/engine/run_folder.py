"""A run folder belongs to one model: resuming it with other settings would mix two.

Each family records its settings in the run folder (the 4D-LLM ``experiment.yaml``, the pipeline
``experiment.json``) and names which of them make another model (``relevant``); a resume that
changes one of those is refused with one line naming the first few, the folder, and the way out.
Settings the earlier run did not record (fields added since) are not conflicts: it ran with
their defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import yaml

from psg4d.errors import CheckpointError

# What decides the model in a recorded settings dict: flat "dotted.key" -> value.
Relevant = Callable[[dict[str, Any]], dict[str, Any]]


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node}


def settings_conflicts(previous: dict[str, Any], current: dict[str, Any], relevant: Relevant) -> list[str]:
    """``key: old -> new`` for each relevant setting both record and that differs."""
    old, new = relevant(previous), relevant(current)
    return [f"{k}: {old[k]!r} -> {new[k]!r}" for k in sorted(old) if k in new and old[k] != new[k]]


def check_run_folder(settings_file: Path, current: dict[str, Any], relevant: Relevant) -> None:
    """Refuse to resume into a run folder whose recorded settings trained another model (its
    checkpoints would be kept as "already done", or fail to load with a size mismatch)."""
    if not settings_file.exists():
        return
    try:  # YAML reads JSON too
        previous = yaml.safe_load(settings_file.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{settings_file}: unreadable ({e}); use another --out or --no-resume") from None
    if not isinstance(previous, dict):
        raise CheckpointError(f"{settings_file}: not a run's settings; use another --out or --no-resume")
    conflicts = settings_conflicts(previous, current, relevant)
    if conflicts:
        more = f" (and {len(conflicts) - 3} more)" if len(conflicts) > 3 else ""
        raise CheckpointError(
            f"{settings_file.parent}: the run there trained a different model ({'; '.join(conflicts[:3])}{more});"
            " give another --out, or --no-resume to start that folder over"
        )
