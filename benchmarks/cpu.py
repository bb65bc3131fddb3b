"""CPU seconds as the benchmarks count them: of a process tree, and of the whole machine."""

from __future__ import annotations

import psutil


def busy_cpu_seconds() -> float:
    """All cores' non-idle time, every process of the machine."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def cpu_seconds(pids: list[int]) -> float:
    """User + system time of these processes and their children still running (a child gone is not counted)."""
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                times = proc.cpu_times()
                total += times.user + times.system
        except psutil.Error:
            pass
    return total
