"""The pipeline's checkpoints: ``config.json`` + ``model.safetensors`` (one file, each stage's module
under its own prefix) for inference, and ``training_state.pt`` beside them for resume.

Written as a whole folder through :func:`psg4d.utils.io.atomic_dir`, so an interrupted save
leaves the previous checkpoint in place. ``trainer.json`` records the SHA-256 of
``model.safetensors`` (``weights_sha256``; not ``config.json``, which is exactly the pipeline's
config and read strictly), and loading refuses a file that no longer hashes to it; checkpoints
written before it was recorded load unverified.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from psg4d.errors import CheckpointError
from psg4d.model.weight_files import WEIGHTS_SHA256, check_file_sha256, file_sha256
from psg4d.model.weights import check_shapes
from psg4d.utils.io import atomic_dir

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
STATE = "training_state.pt"
META = "trainer.json"


def save_modules(path: str | Path, modules: dict[str, nn.Module], config: dict[str, Any], *,
                 state: dict[str, Any] | None = None, meta: dict[str, Any] | None = None) -> Path:
    """Write ``modules`` (prefix -> module) and ``config`` to the folder ``path``; ``state`` (optimizer,
    scheduler, step, RNG) makes it resumable."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in modules.items():
        for k, v in module.state_dict().items():
            tensors[f"{prefix}.{k}"] = v.detach().cpu().contiguous()
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path}: not saved, non-finite weights in {bad[:3]}")
    with atomic_dir(path) as tmp:
        save_file(tensors, str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(json.dumps(config, indent=1))
        if state is not None:
            torch.save(state, tmp / STATE)
        info = {"saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(meta or {}),
                WEIGHTS_SHA256: file_sha256(tmp / WEIGHTS)}
        (tmp / META).write_text(json.dumps(info, indent=1))
    return path


def read_config(path: str | Path) -> dict[str, Any]:
    file = Path(path) / CONFIG
    try:
        return json.loads(file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not a checkpoint folder (no {CONFIG})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: unreadable ({e})") from None


def _recorded_sha256(path: Path) -> Any:
    """The ``weights_sha256`` of the folder's trainer.json (None: written before it was recorded)."""
    file = path / META
    if not file.is_file():
        return None
    try:
        info = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: unreadable ({e})") from None
    return info.get(WEIGHTS_SHA256) if isinstance(info, dict) else None


def load_modules(path: str | Path, modules: dict[str, nn.Module]) -> None:
    """Load the weights under each prefix of ``modules`` strictly (a missing or unexpected key is an
    error naming the folder), after checking the file's recorded SHA-256."""
    file = Path(path) / WEIGHTS
    if not file.is_file():
        raise CheckpointError(f"{path}: no {WEIGHTS}")
    check_file_sha256(file, _recorded_sha256(Path(path)), recorded_in=Path(path) / META)
    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{file}: unreadable or corrupted ({e})") from None
    for prefix, module in modules.items():
        sub = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
        if not sub:
            raise CheckpointError(f"{file}: holds no weights of {prefix!r}")
        check_shapes({f"{prefix}.{k}": v.shape for k, v in sub.items()},
                     {f"{prefix}.{k}": v.shape for k, v in module.state_dict().items()}, file)
        missing, unexpected = module.load_state_dict(sub, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{file}: {prefix} does not match this config "
                                  f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")


def load_state(path: str | Path) -> dict[str, Any] | None:
    file = Path(path) / STATE
    return torch.load(file, weights_only=True) if file.is_file() else None
