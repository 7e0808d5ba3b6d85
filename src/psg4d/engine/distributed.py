"""Process-group setup, rank gating and model wrapping, so the same loop runs alone or under torchrun.

torchrun sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; with ``WORLD_SIZE>1``
the process group uses ``nccl`` on GPUs and ``gloo`` on CPU. Only rank 0 writes
files; the helpers here keep the other ranks in step with it.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn

from psg4d.errors import ConfigError

log = logging.getLogger(__name__)

# Parameters per FSDP unit: blocks at least this big are sharded (and gathered) on their own.
FSDP_MIN_UNIT_PARAMS = 10_000_000


@dataclass(frozen=True, kw_only=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    # True when this call created the process group (and so must destroy it).
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device={name!r} but CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    return dev


def init_distributed(device: str = "auto") -> DistInfo:
    """Read the torchrun environment; create the process group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    owns = False
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend)
        owns = True
        log.info("process group: %s, rank %d of %d on %s", backend, rank, world, dev)
    elif dev.type == "cuda":
        torch.cuda.set_device(dev)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world, device=dev, owns_group=owns)


def shutdown(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        # Free what still holds the group (a DDP reducer in a reference cycle, finished work
        # objects) while the group and the interpreter are alive: freed during interpreter
        # finalisation, gloo's threads can abort the process after a complete run
        # ("terminate called without an active exception", seen once in CI on rank 1).
        gc.collect()
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def mean_across_ranks(value: float, info: DistInfo) -> float:
    return sum_across_ranks([value], info)[0] / info.world_size


def sum_across_ranks(values: list[float], info: DistInfo) -> list[float]:
    """Element-wise sums of ``values`` over the ranks (collective: every rank passes as many)."""
    if not info.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return [float(v) for v in t.cpu()]


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order (on every rank)."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def wrap_model(model: nn.Module, info: DistInfo, *, parallel: str, find_unused_parameters: bool) -> nn.Module:
    """DDP or FSDP around ``model`` when distributed; the model itself otherwise."""
    if not info.distributed:
        return model
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    if parallel == "ddp":
        return nn.parallel.DistributedDataParallel(
            model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
        )
    if parallel == "fsdp":
        if info.device.type != "cuda":
            raise ConfigError("train.parallel=fsdp needs CUDA devices (FSDP shards over GPUs); use ddp on CPU")
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp.wrap import size_based_auto_wrap_policy

        # use_orig_params keeps per-parameter names (and so per-prefix lr groups
        # and frozen modules) working on the sharded model; the size policy makes
        # each large block (an LLM layer) its own shard unit, so only one block is
        # gathered at a time.
        return FSDP(
            model,
            auto_wrap_policy=functools.partial(size_based_auto_wrap_policy, min_num_params=FSDP_MIN_UNIT_PARAMS),
            device_id=info.device if info.device.type == "cuda" else None,
            use_orig_params=True,
        )
    raise ConfigError(f"train.parallel: unknown {parallel!r}; valid: ['ddp', 'fsdp']")


def average_gradients(params: list[torch.Tensor], info: DistInfo) -> None:
    """Mean of each parameter's gradient over the ranks, for a module trained without a DDP/FSDP
    wrapper (the pipeline's stages call their module several times per step, which DDP's hooks do
    not allow). A parameter without a gradient on this rank takes part with zeros, so every rank
    enters the same collectives."""
    if not info.distributed or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= info.world_size
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset:offset + g.numel()].view_as(g).clone()
        offset += g.numel()


def is_wrapped(model: nn.Module) -> bool:
    """Whether ``model`` is DDP or FSDP (which synchronise gradients themselves)."""
    return isinstance(model, nn.parallel.DistributedDataParallel) or is_fsdp(model)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def is_fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    return isinstance(model, FSDP)


@contextlib.contextmanager
def full_params(model: nn.Module) -> Iterator[nn.Module]:
    """The unwrapped model with full (unsharded) parameters on every rank.

    Collective under FSDP: every rank must enter it.
    """
    if is_fsdp(model):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        with FSDP.summon_full_params(model, writeback=False, offload_to_cpu=False):
            yield model.module
    else:
        yield unwrap(model)
