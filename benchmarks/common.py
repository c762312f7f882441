"""What every benchmark script shares: the machine line it prints and median timing.

The scripts run as ``python benchmarks/<name>.py`` and put the repository root on
``sys.path`` before importing this module as ``benchmarks.common``.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo``, else what :mod:`platform` reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine() -> str:
    """One line naming what the figures depend on: CPU model, usable cores, torch and its
    intra-op threads, and the 1/5/15-minute load average (a busy machine spoils ratios)."""
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (
        f"{cpu_model()}; {usable_cores()} usable cores (os.cpu_count() {os.cpu_count()}); "
        f"Python {platform.python_version()}; torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads; load average {load}"
    )


def median_seconds(fn: Callable[[], object], repeats: int, warm: bool = True) -> float:
    """Median wall time of ``repeats`` calls of ``fn``, after one untimed call when ``warm``
    (page cache, lazily initialised tables, allocator)."""
    if warm:
        fn()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)
