"""Who used the two cores: this process, the PostgreSQL server (all its processes), the machine.

Read from /proc and getrusage at the edges of a measured window; cheap enough to take while running.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, kw_only=True)
class CpuSample:
    at_s: float
    self_s: float
    children_s: float
    postgres_s: float
    machine_busy_s: float
    machine_iowait_s: float
    machine_total_s: float


@dataclass(frozen=True, kw_only=True)
class CpuUsage:
    """Cores used on average over a window (2.0 = both cores of a 2-core machine)."""

    wall_s: float
    python_cores: float
    postgres_cores: float
    children_cores: float
    machine_busy_cores: float
    machine_iowait_cores: float

    @property
    def other_cores(self) -> float:
        """What the rest of the machine used meanwhile (other programs): it depresses every figure."""
        ours = self.python_cores + self.postgres_cores + self.children_cores
        return max(0.0, self.machine_busy_cores - ours)

    def describe(self) -> str:
        parts = [f"python {self.python_cores:.2f}", f"postgres {self.postgres_cores:.2f}"]
        if self.children_cores >= 0.005:
            parts.append(f"pgbench {self.children_cores:.2f}")
        parts.append(f"other programs {self.other_cores:.2f}")
        parts.append(f"machine busy {self.machine_busy_cores:.2f}")
        parts.append(f"iowait {self.machine_iowait_cores:.2f}")
        return ", ".join(parts) + " (cores)"


def _stat_fields(pid: int | str) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces; what follows is space-separated.
    return text[text.rindex(")") + 2 :].split()


def postgres_cpu_s(postmaster_pid: int | None) -> float:
    """CPU seconds of the postmaster, its reaped children (cutime/cstime: backends that exited) and its
    live children, so a backend that exits between two samples is still counted once."""
    if postmaster_pid is None:
        return 0.0
    fields = _stat_fields(postmaster_pid)
    if fields is None:
        return 0.0
    # After the ")": [1] ppid, [11] utime, [12] stime, [13] cutime, [14] cstime (in clock ticks).
    ticks = sum(int(value) for value in fields[11:15])
    ticks += sum(int(child[11]) + int(child[12]) for child in _children(postmaster_pid))
    return ticks / CLOCK_TICKS_PER_S


def _children(parent_pid: int) -> list[list[str]]:
    """The /proc stat fields of every live child of `parent_pid`."""
    return [fields for _, fields in _child_entries(parent_pid)]


def child_pids(parent_pid: int) -> list[int]:
    """The pids of every live child of `parent_pid` (granian's workers of a server, say)."""
    return [pid for pid, _ in _child_entries(parent_pid)]


def _child_entries(parent_pid: int) -> list[tuple[int, list[str]]]:
    children = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (child := _stat_fields(entry.name)) is not None and int(child[1]) == parent_pid:
            children.append((int(entry.name), child))
    return children


def postgres_children(postmaster_pid: int | None) -> int:
    """How many processes the postmaster has now (its background workers, plus one per connection)."""
    return 0 if postmaster_pid is None else len(_children(postmaster_pid))


def _machine() -> tuple[float, float, float]:
    with open("/proc/stat") as stat:
        values = [int(value) for value in stat.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq + steal
    return busy / CLOCK_TICKS_PER_S, iowait / CLOCK_TICKS_PER_S, (busy + idle + iowait) / CLOCK_TICKS_PER_S


def sample(postmaster_pid: int | None) -> CpuSample:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy, iowait, total = _machine()
    return CpuSample(
        at_s=time.perf_counter(),
        self_s=own.ru_utime + own.ru_stime,
        children_s=children.ru_utime + children.ru_stime,
        postgres_s=postgres_cpu_s(postmaster_pid),
        machine_busy_s=busy,
        machine_iowait_s=iowait,
        machine_total_s=total,
    )


def usage(start: CpuSample, end: CpuSample) -> CpuUsage:
    wall = max(end.at_s - start.at_s, 1e-9)
    return CpuUsage(
        wall_s=wall,
        python_cores=(end.self_s - start.self_s) / wall,
        postgres_cores=(end.postgres_s - start.postgres_s) / wall,
        children_cores=(end.children_s - start.children_s) / wall,
        machine_busy_cores=(end.machine_busy_s - start.machine_busy_s) / wall,
        machine_iowait_cores=(end.machine_iowait_s - start.machine_iowait_s) / wall,
    )


def peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _spin(iterations: int) -> float:
    started = time.perf_counter()
    total = 0
    for number in range(iterations):
        total += number
    return time.perf_counter() - started


def parallel_speedup(alone_s: float = 0.5) -> float:
    """How much more work the machine does with all its CPUs busy than with one: the same CPU-bound loop
    once alone, then in one process per CPU at once. A machine whose CPUs share one physical core's
    throughput shows about 1.0 whatever it reports as its CPU count, and then no overlap of Python with
    PostgreSQL can raise a figure: only less work per operation can."""
    cpus = os.cpu_count() or 1
    iterations = 1_000_000
    while (taken_s := _spin(iterations)) < alone_s / 4:
        iterations *= 2
    iterations = int(iterations * alone_s / taken_s)
    alone_taken_s = _spin(iterations)
    started = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(cpus) as pool:
        pool.map(_spin, [iterations] * cpus)
    return cpus * alone_taken_s / (time.perf_counter() - started)
