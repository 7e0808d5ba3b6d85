"""The pipeline's model files: ``config.json`` + ``model.safetensors`` (one file, each stage's module
under its own prefix). Checkpoint folders (``trainer.json`` with the weights' SHA-256, the training
state for resume, the atomic write) are the engine's (:mod:`psg4d.engine.checkpoint`); this module
writes and reads what is inside them.

``config.json`` is exactly the pipeline's config and read strictly, so the digest lives in
``trainer.json``; loading refuses a ``model.safetensors`` that no longer hashes to it
(:func:`psg4d.engine.checkpoint.verify_weights`; checkpoints written before it was recorded load
unverified).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from psg4d.engine import checkpoint as ckpt
from psg4d.errors import CheckpointError
from psg4d.model.provenance import check_shapes

CONFIG = ckpt.MODEL_CONFIG
WEIGHTS = ckpt.MODEL_WEIGHTS
META = ckpt.TRAINER_META


def write_modules(folder: Path, modules: nn.ModuleDict, config: dict[str, Any]) -> None:
    """The model files of ``modules`` (prefix -> module) into ``folder`` (the engine's temporary one)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in modules.state_dict().items()}
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not v.isfinite().all()]
    if bad:
        raise CheckpointError(f"{folder}: not saved, non-finite weights in {bad[:3]}")
    save_file(tensors, str(folder / WEIGHTS))
    (folder / CONFIG).write_text(json.dumps(config, indent=1))


def module_writer(config: dict[str, Any], prefix: str):
    """A ``write_model`` for the engine's stage folders: the one module trained, under ``prefix``."""
    return lambda module, folder: write_modules(folder, nn.ModuleDict({prefix: module}), config)


def save_modules(path: str | Path, modules: dict[str, nn.Module], config: dict[str, Any], *,
                 meta: dict[str, Any] | None = None) -> Path:
    """An inference checkpoint folder of ``modules`` (prefix -> module) and ``config``."""
    meta = dict(meta or {})
    return ckpt.save_checkpoint(path, model=nn.ModuleDict(modules), write=lambda m, d: write_modules(d, m, config),
                                optimizer=None, scheduler=None, step=int(meta.pop("step", 0)), rng=None, meta=meta)


def read_config(path: str | Path) -> dict[str, Any]:
    file = Path(path) / CONFIG
    try:
        return json.loads(file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not a checkpoint folder (no {CONFIG})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: unreadable ({e})") from None


def load_modules(path: str | Path, modules: dict[str, nn.Module]) -> None:
    """Load the weights under each prefix of ``modules`` strictly (a missing or unexpected key is an
    error naming the folder), after checking the file's recorded SHA-256."""
    file = Path(path) / WEIGHTS
    if not file.is_file():
        raise CheckpointError(f"{path}: no {WEIGHTS}")
    ckpt.verify_weights(path)
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
