"""CPU seconds as the benchmarks count them: of a process tree, and of the whole machine; and which CPU it is."""

from __future__ import annotations

from pathlib import Path

import psutil


def cpu_kind() -> str:
    """The CPU's vendor, family and model, and its vector units: the embedding costs ~1.5x more on AVX2 alone than
    with AVX-512, and int8 matrix units (AMX) can change it again. Every figure is reported with it."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    units = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    extras = [name for flag, name in (("avx512_vnni", "VNNI"), ("amx_int8", "AMX-INT8")) if flag in flags]
    where = f"{fields.get('vendor_id', '?')} family {fields.get('cpu family', '?')} model {fields.get('model', '?')}"
    return f"{fields.get('model name', '?')} ({where})  {' '.join([units, *extras])}"


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
