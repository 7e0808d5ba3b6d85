"""A stage's folder: numbered resumable checkpoints behind ``last``, the finished model in ``final``.

Every rank calls these (they gather RNG states and, under FSDP, full parameters); only rank 0
writes. ``write_model(model, folder)`` writes a family's model files (``config.json`` +
``model.safetensors``, + tokenizer): the 4D-LLM's ``save_pretrained``, the pipeline's stage
modules; :func:`psg4d.engine.checkpoint.save_checkpoint` adds ``trainer.json`` (with the weights'
SHA-256) and the versioned training state.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from psg4d.engine import checkpoint as ckpt
from psg4d.engine import distributed as dist_utils
from psg4d.engine.distributed import DistInfo
from psg4d.errors import CheckpointError

log = logging.getLogger(__name__)

WriteModel = Callable[[nn.Module, Path], None]


def finished(stage_dir: Path, total: int) -> dict[str, Any] | None:
    """``final``'s trainer record when an earlier run finished this stage with at least ``total``
    steps (a longer schedule continues from ``last``); else None."""
    final = stage_dir / ckpt.FINAL
    if not ((final / ckpt.TRAINER_META).exists() and (final / ckpt.MODEL_WEIGHTS).exists()):
        return None
    done = ckpt.read_trainer_meta(final)
    return done if int(done.get("step", 0)) >= total else None


def _optimizer_state(wrapped: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    if dist_utils.is_fsdp(wrapped):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        return FSDP.optim_state_dict(wrapped, optimizer)
    return optimizer.state_dict()


def save_resumable(
    stage_dir: Path, *, name: str, wrapped: nn.Module, write_model: WriteModel, optimizer: torch.optim.Optimizer,
    scheduler: Any, step: int, info: DistInfo, keep_last: int, scaler: Any = None,
    data_position: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> None:
    """``stage_dir/step_XXXXXXXX`` (model, optimizer, schedule, every rank's RNG, the data position and
    ``extra``), ``last`` pointed at it, older numbered ones beyond ``keep_last`` removed."""
    rngs = dist_utils.gather_objects(ckpt.capture_rng(), info)
    optim_state = _optimizer_state(wrapped, optimizer)
    with dist_utils.full_params(wrapped) as model:
        if info.is_main:
            target = stage_dir / ckpt.step_dir_name(step)
            ckpt.save_checkpoint(
                target, model=model, write=write_model, optimizer=optim_state, scheduler=scheduler, step=step,
                rng=rngs, data_position=data_position, scaler=scaler, extra=extra, meta=meta,
            )
            ckpt.point_last(stage_dir, target)
            removed = ckpt.prune_checkpoints(stage_dir, keep_last)
            log.info("stage %s: checkpoint %s%s", name, target, f" (removed {len(removed)} older)" if removed else "")
    dist_utils.barrier(info)


def restore_resumable(
    last: Path, *, wrapped: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, info: DistInfo,
    scaler: Any = None,
) -> dict[str, Any]:
    """Optimizer, schedule, scaler and this rank's RNG from ``last`` (the model's weights are the
    family's to load: it built the model); returns the training state (``step``, ``data``, ``extra``)."""
    state = ckpt.load_training_state(last)
    optim_state = state["optimizer"]
    if dist_utils.is_fsdp(wrapped):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        optim_state = FSDP.optim_state_dict_to_load(wrapped, optimizer, optim_state)
    try:
        optimizer.load_state_dict(optim_state)
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{last}: optimizer state does not fit this stage's parameters: {e}") from None
    if state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler") is not None:
        scaler.load_state_dict(state["scaler"])
    saved_ranks = int(state["data"].get("world_size", len(state["rng"]) or 1))
    if saved_ranks != info.world_size:
        log.warning("resuming a %d-process run on %d processes: data order and noise will differ from an"
                    " uninterrupted run", saved_ranks, info.world_size)
    rngs = state["rng"]
    if rngs:
        ckpt.restore_rng(rngs[info.rank] if info.rank < len(rngs) else rngs[0])
    return state


def save_final(
    stage_dir: Path, *, wrapped: nn.Module, write_model: WriteModel, step: int, info: DistInfo,
    meta: dict[str, Any],
) -> Path:
    """``stage_dir/final``: the model files and ``trainer.json`` (``complete``, ``step``, ``meta``)."""
    final = stage_dir / ckpt.FINAL
    with dist_utils.full_params(wrapped) as model:
        if info.is_main:
            ckpt.save_checkpoint(final, model=model, write=write_model, optimizer=None, scheduler=None, step=step,
                                 rng=None, meta={"complete": True, **meta})
    dist_utils.barrier(info)
    return final
