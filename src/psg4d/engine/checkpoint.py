"""Checkpoints of both model families: model files for inference plus a separate, versioned
training state for exact resume.

A checkpoint folder holds the family's model files (``model.save_pretrained`` or the writer
given: ``config.json``, ``model.safetensors``, tokenizer files), ``trainer.json`` (step, stage,
human readable, and ``weights_sha256``: the SHA-256 of ``model.safetensors``, which loading
checks) and ``training_state.pt``: optimizer, scheduler, step, data position, a family's
``extra`` state (e.g. the pipeline's sampling generator) and the RNG states of python / numpy /
torch per rank (as tensors, so it loads with ``torch.load(weights_only=True)``). Folders are written to a temporary sibling
and renamed into place; ``last`` is a symlink swapped atomically onto the newest
numbered ``step_XXXXXXXX`` folder, and older numbered folders beyond ``keep``
are removed.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from psg4d.errors import CheckpointError
from psg4d.model.weight_files import WEIGHTS_SHA256, check_file_sha256, file_sha256
from psg4d.model.provenance import check_finite, check_shapes
from psg4d.utils.io import atomic_dir

log = logging.getLogger(__name__)

TRAINING_STATE = "training_state.pt"
TRAINER_META = "trainer.json"
MODEL_WEIGHTS = "model.safetensors"
MODEL_CONFIG = "config.json"
LAST = "last"
FINAL = "final"
STATE_VERSION = 1
_STEP_RE = re.compile(r"^step_(\d{8})$")


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


# --------------------------------------------------------------------------- RNG


def capture_rng() -> dict[str, Any]:
    """RNG states of python, numpy and torch (CPU and CUDA) as tensors and primitives."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(
        (npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["gauss"])
    )
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- save


def save_checkpoint(
    ckpt_dir: str | Path,
    *,
    model: nn.Module,
    write: Callable[[nn.Module, Path], None] | None = None,
    optimizer: torch.optim.Optimizer | dict | None,
    scheduler: Any | None,
    step: int,
    rng: list[dict[str, Any]] | dict[str, Any] | None,
    data_position: dict[str, int] | None = None,
    scaler: Any | None = None,
    extra: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder atomically and return its path.

    ``optimizer`` may be an optimizer or an already gathered state dict (FSDP).
    ``rng`` is one state per rank (or one state). With ``optimizer=None`` only
    the model files and ``trainer.json`` are written (an inference checkpoint). ``write(model, folder)``
    writes the model files (default: ``model.save_pretrained(folder)``); ``extra`` is state a
    family keeps besides the RNGs (tensors and primitives only).
    """
    ckpt_dir = Path(ckpt_dir)
    with atomic_dir(ckpt_dir) as tmp:
        if write is not None:
            write(model, tmp)
        else:
            model.save_pretrained(tmp)
        if not (tmp / MODEL_WEIGHTS).exists():
            raise CheckpointError(f"{type(model).__name__}: its model files lack {MODEL_WEIGHTS}")
        if optimizer is not None:
            state = {
                "version": STATE_VERSION,
                "step": int(step),
                "optimizer": optimizer if isinstance(optimizer, dict) else optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": rng if isinstance(rng, list) else ([rng] if rng is not None else []),
                "data": dict(data_position or {}),
                "extra": dict(extra or {}),
            }
            torch.save(state, tmp / TRAINING_STATE)
        info = {"step": int(step), "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        info.update(meta or {})
        # recorded here whatever the model's save_pretrained records; a digest it recorded moments ago
        # in this same unpublished folder is reused rather than hashing a large file twice
        found = _recorded_sha256(tmp, (MODEL_CONFIG,))
        info[WEIGHTS_SHA256] = found[0] if found else file_sha256(tmp / MODEL_WEIGHTS)
        (tmp / TRAINER_META).write_text(json.dumps(info, indent=2))
    return ckpt_dir


def point_last(stage_dir: str | Path, target: str | Path) -> None:
    """Make ``stage_dir/last`` a relative symlink to ``target`` (atomic swap)."""
    stage_dir = Path(stage_dir)
    tmp = stage_dir / f".{LAST}.{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(Path(target).name, tmp)
    os.replace(tmp, stage_dir / LAST)


def step_checkpoints(stage_dir: str | Path) -> list[tuple[int, Path]]:
    """Numbered checkpoints of a stage folder, oldest first."""
    stage_dir = Path(stage_dir)
    if not stage_dir.is_dir():
        return []
    out = []
    for p in stage_dir.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out)


def prune_checkpoints(stage_dir: str | Path, keep: int) -> list[Path]:
    """Remove all but the newest ``keep`` numbered checkpoints (never the one ``last`` names)."""
    stage_dir = Path(stage_dir)
    last = find_last(stage_dir)
    ckpts = step_checkpoints(stage_dir)
    removed = []
    for _, p in ckpts[: max(0, len(ckpts) - keep)]:
        if last is not None and p.resolve() == last.resolve():
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def find_last(stage_dir: str | Path) -> Path | None:
    """``stage_dir/last`` if it names a complete checkpoint, else None."""
    p = Path(stage_dir) / LAST
    if p.exists() and (p / TRAINING_STATE).exists() and (p / MODEL_WEIGHTS).exists():
        return p
    return None


# --------------------------------------------------------------------------- load


def _recorded_sha256(ckpt_dir: Path, names: tuple[str, ...]) -> tuple[str, Path] | None:
    """The ``weights_sha256`` the first of the JSON files ``names`` in ``ckpt_dir`` holds, and that
    file; None where none does (a checkpoint written before it was recorded, or by a model whose
    own config.json is something else)."""
    for name in names:
        file = ckpt_dir / name
        if not file.is_file():
            continue
        try:
            data = json.loads(file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{file}: malformed JSON ({e})") from None
        if isinstance(data, dict) and data.get(WEIGHTS_SHA256) is not None:
            return data[WEIGHTS_SHA256], file
    return None


def verify_weights(ckpt_dir: str | Path) -> None:
    """Refuse (CheckpointError naming the file) a ``model.safetensors`` that no longer hashes to the
    SHA-256 its checkpoint recorded; one recorded nowhere (written before it was) is not checked."""
    ckpt_dir = Path(ckpt_dir)
    # trainer.json is save_checkpoint's record; a folder save_pretrained wrote alone (an init made
    # outside training) has only the model's config.json
    recorded, where = _recorded_sha256(ckpt_dir, (TRAINER_META, MODEL_CONFIG)) or (None, ckpt_dir / TRAINER_META)
    check_file_sha256(ckpt_dir / MODEL_WEIGHTS, recorded, recorded_in=where)


def read_trainer_meta(ckpt_dir: str | Path) -> dict[str, Any]:
    """A checkpoint's ``trainer.json`` (step, stage, ...); CheckpointError naming it if unreadable."""
    path = Path(ckpt_dir) / TRAINER_META
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint's trainer record ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a trainer record (expected a JSON object)")
    return data


def load_training_state(ckpt_dir: str | Path) -> dict[str, Any]:
    path = Path(ckpt_dir) / TRAINING_STATE
    if not path.exists():
        raise CheckpointError(f"{ckpt_dir}: no {TRAINING_STATE} (not a resumable training checkpoint)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which one
        raise CheckpointError(f"{path}: cannot read training state: {e}") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise CheckpointError(f"{path}: unsupported training state (expected version {STATE_VERSION})")
    return state


def load_model_weights(model: nn.Module, ckpt_dir: str | Path, *, allow_missing: tuple[str, ...] = ()) -> None:
    """Load ``model.safetensors`` of a checkpoint into ``model`` in place.

    Weights of modules named in ``allow_missing`` (prefixes) may be absent: a
    later stage can add modules that start from their own initialisation. So
    may parameters the freshly built model holds frozen, or loaded from pretrained
    weights (``model.pretrained_parameters()``): a checkpoint leaves out the frozen
    weights their pretrained source reproduces (e.g. ImageBind, a LoRA-wrapped LLM's base).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    path = Path(ckpt_dir) / MODEL_WEIGHTS
    if not path.exists():
        raise CheckpointError(f"{ckpt_dir}: no {MODEL_WEIGHTS}; expected a folder written by save_pretrained")
    verify_weights(ckpt_dir)
    check_shapes(stored_weight_shapes(ckpt_dir), {k: v.shape for k, v in model.state_dict().items()}, path)
    try:
        missing, unexpected = load_model(model, str(path), strict=False, device=str(_model_device(model)))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: unreadable or corrupted ({e})") from None
    except RuntimeError as e:  # what check_shapes does not foresee; torch's text spans lines
        detail = " ".join(str(e).split())
        raise CheckpointError(f"{path}: tensors do not fit the configured model: {detail}") from None
    loaded = set(model.state_dict()) - set(missing)
    check_finite(((k, v) for k, v in model.state_dict().items() if k in loaded), path)
    frozen = {k for k, p in model.named_parameters() if not p.requires_grad}
    pretrained = getattr(model, "pretrained_parameters", None)
    reproducible = frozen | (set(pretrained()) if callable(pretrained) else set())
    missing = [
        k for k in missing
        if k not in reproducible and not any(k == p or k.startswith(p + ".") for p in allow_missing)
    ]
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the model: missing {missing[:8]}{'...' if len(missing) > 8 else ''},"
            f" unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
        )


def stored_weight_names(ckpt_dir: str | Path) -> set[str]:
    """Names of the tensors in a checkpoint's ``model.safetensors`` (read from its header only)."""
    from safetensors import SafetensorError, safe_open

    path = Path(ckpt_dir) / MODEL_WEIGHTS
    try:
        with safe_open(str(path), framework="pt") as f:
            return set(f.keys())
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read the weight names: {e}") from None


def stored_weight_shapes(ckpt_dir: str | Path) -> dict[str, list[int]]:
    """Name -> shape of each tensor in a checkpoint's ``model.safetensors`` (read from its header only)."""
    from safetensors import SafetensorError, safe_open

    path = Path(ckpt_dir) / MODEL_WEIGHTS
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: unreadable or corrupted ({e})") from None


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
