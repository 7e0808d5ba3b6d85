"""How many CPU threads torch may use: never more than the CPUs this process may run on.

``os.cpu_count()`` reports the machine's cores, not the process's share: a
container with a CPU quota or a ``taskset`` affinity mask runs torch's default
of one thread per core on fewer cores, and every parallel region then waits for
threads that are not running (a 2-core quota on a 64-core host is ~10x slower
than 2 threads). :func:`available_cpus` takes the smallest of the affinity mask
and the cgroup quota (v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from pathlib import Path

import torch

from psg4d.errors import ConfigError

log = logging.getLogger(__name__)

_CGROUP = Path("/sys/fs/cgroup")


def _cgroup_quota(root: Path = _CGROUP) -> float | None:
    """CPUs granted by the cgroup quota (None: unlimited or unknown)."""
    with contextlib.suppress(OSError, ValueError):  # no cgroup v2 file: try v1 below
        quota, period = (root / "cpu.max").read_text().split()[:2]  # v2: "max 100000" or "200000 100000"
        return None if quota == "max" else int(quota) / int(period)
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())  # v1: -1 = unlimited
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def available_cpus(cgroup_root: Path = _CGROUP) -> int:
    """CPUs this process may use: affinity mask, capped by the cgroup quota (at least 1)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota)))
    return max(1, cpus)


def _busy_seconds(stat_path: Path, cpus: set[int]) -> float | None:
    """CPU seconds spent busy (not idle, not waiting on I/O) on ``cpus`` since boot, from /proc/stat."""
    try:
        lines = stat_path.read_text().splitlines()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy = 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        v = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
        busy += v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
    return busy / tick


class AdaptiveThreads:
    """Thread count for a series of work units (videos): before each, the available CPUs minus
    the CPUs other processes kept busy since the previous one.

    Several threads only pay when each gets a core: when another process holds one of two
    cores, every parallel region waits for the thread that is not running, and prediction
    with 2 threads runs ~3.5x slower than idle, against ~1.3x with 1 thread (BENCHMARKS.md).
    Others' use is the busy time of this process's CPUs (/proc/stat) minus this process's own
    CPU time, so the count follows the load between units. ``requested`` fixes the count."""

    def __init__(self, requested: int | None = None, *, max_threads: int | None = None,
                 stat_path: Path = Path("/proc/stat"), cgroup_root: Path = _CGROUP, clock=time.monotonic,
                 cpu_time=time.process_time, sleep=time.sleep):
        if requested is not None and requested < 1:
            raise ConfigError(f"--threads must be at least 1, got {requested}")
        self.requested = requested
        self.stat_path = stat_path
        self.available = available_cpus(cgroup_root)
        if max_threads is not None:  # a configured ceiling (e.g. train.num_threads)
            self.available = max(1, min(self.available, max_threads))
        try:
            self.cpus = set(os.sched_getaffinity(0))
        except AttributeError:
            self.cpus = set(range(self.available))
        self._clock, self._cpu_time, self._sleep = clock, cpu_time, sleep
        self._last: tuple[float, float, float] | None = None
        self.history: list[int] = []

    def _sample(self) -> tuple[float, float, float] | None:
        busy = _busy_seconds(self.stat_path, self.cpus)
        return None if busy is None else (self._clock(), self._cpu_time(), busy)

    def others(self) -> float | None:
        """CPUs other processes used since the last call (None before it, or without /proc/stat)."""
        now = self._sample()
        last, self._last = self._last, now
        if now is None or last is None or now[0] - last[0] < 1e-3:
            return None
        wall, own, busy = (a - b for a, b in zip(now, last))
        return max(0.0, busy - own) / wall

    def __call__(self) -> int:
        """Set and return torch's thread count for the next unit of work."""
        if self.requested is not None:
            n = self.requested
        else:
            others = self.others()
            if others is None:  # no history yet: a short look at the load now
                self._sleep(0.05)
                others = self.others()
            n = self.available if others is None else max(1, min(self.available, self.available - round(others)))
        if n != torch.get_num_threads():
            torch.set_num_threads(n)
        self.history.append(n)
        return n
