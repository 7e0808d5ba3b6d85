"""Thread counts from the CPUs a process may use, and adapted to what other processes use."""

from __future__ import annotations

import os

import pytest
import torch

from psg4d.errors import ConfigError
from psg4d.utils.threads import AdaptiveThreads, available_cpus


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """AdaptiveThreads sets torch's process-wide thread count: give the other tests theirs back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _affinity() -> int:
    return len(os.sched_getaffinity(0))


def test_available_cpus_is_capped_by_the_cgroup_quota(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # cgroup v2: 1.5 CPUs
    assert available_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")  # unlimited: the affinity mask decides
    assert available_cpus(tmp_path) == _affinity()
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("50000")  # cgroup v1: half a CPU -> still 1 thread
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert available_cpus(v1) == 1
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    assert available_cpus(v1) == _affinity()
    assert available_cpus(tmp_path / "missing") == _affinity()


class _Clock:
    def __init__(self):
        self.wall = self.cpu = 0.0

    def advance(self, wall: float, own_cpu: float) -> None:
        self.wall += wall
        self.cpu += own_cpu


def _stat(path, busy_jiffies: list[int]) -> None:
    """A /proc/stat with the given busy (user) jiffies per CPU of this process's affinity."""
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    for cpu, busy in zip(sorted(os.sched_getaffinity(0)), busy_jiffies):
        lines.append(f"cpu{cpu} {busy} 0 0 100000 0 0 0 0 0 0")
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.skipif(_affinity() < 2, reason="needs 2 CPUs in the affinity mask to see one taken")
def test_adaptive_threads_leave_the_cpus_others_use(tmp_path):
    tick = os.sysconf("SC_CLK_TCK")
    stat, clock = tmp_path / "stat", _Clock()
    busy = [0] * _affinity()
    _stat(stat, busy)

    def sleep(seconds: float) -> None:
        clock.advance(seconds, 0.0)

    threads = AdaptiveThreads(stat_path=stat, cgroup_root=tmp_path, clock=lambda: clock.wall,
                              cpu_time=lambda: clock.cpu, sleep=sleep)
    n = threads.available
    assert threads() == n  # idle machine: every CPU
    # a 2 s video: this process used 2 CPUs x 2 s, another process kept one CPU busy as well
    clock.advance(2.0, own_cpu=4.0)
    busy[0] += int(2.0 * tick)  # the other process: one CPU for 2 s
    busy[1 % n] += int(4.0 * tick)  # our own 4 CPU-seconds, wherever they ran
    _stat(stat, busy)
    assert threads() == n - 1
    # the other process stopped: back to all CPUs
    clock.advance(2.0, own_cpu=2.0 * (n - 1))
    busy[1 % n] += int(2.0 * (n - 1) * tick)
    _stat(stat, busy)
    assert threads() == n
    assert threads.history == [n, n - 1, n]


def test_requested_threads_are_fixed(tmp_path):
    threads = AdaptiveThreads(1, stat_path=tmp_path / "missing")
    assert threads() == 1 and threads() == 1
    with pytest.raises(ConfigError, match="--threads"):
        AdaptiveThreads(0)
    # without /proc/stat: the available CPUs
    assert AdaptiveThreads(stat_path=tmp_path / "missing", cgroup_root=tmp_path)() == _affinity()
