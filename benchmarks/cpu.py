"""CPU seconds as the benchmarks count them: of a process tree, and of the whole machine; and which CPU it is."""

from __future__ import annotations

from pathlib import Path

import psutil


def cpu_kind() -> str:
    """The CPU's model name and whether it has AVX-512 (the embedding costs ~1.5x more on AVX2 alone): every figure
    is reported with it."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "")
    return f"{model}  {'AVX-512' if 'avx512f' in cpuinfo else 'AVX2'}"


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
