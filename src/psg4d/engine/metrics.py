"""A stage's ``metrics.jsonl``: one JSON object per line (training records have ``loss``,
validation records ``val``), written by rank 0 and trimmed back on resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from psg4d.utils.io import atomic_write_text

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """``metrics.jsonl`` of one stage: one JSON object per line, appended by rank 0."""

    def __init__(self, path: Path, *, enabled: bool):
        self.path = path
        self.enabled = enabled

    def reset(self, keep_until_step: int | None) -> list[dict[str, Any]]:
        """Start fresh (None) or keep only records up to a resumed step: a killed run
        may have logged steps after its last checkpoint, which the resumed run redoes.
        Returns the kept records."""
        kept: list[dict[str, Any]] = []
        if keep_until_step is not None and self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by the kill
                if rec.get("step", 0) <= keep_until_step:
                    kept.append(rec)
        if self.enabled:
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        return kept

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of a ``metrics.jsonl`` (training records have ``loss``, validation ones ``val``)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
