"""Shared pieces of the benchmark scripts: workloads, placement on cores, a served target process."""

from __future__ import annotations

import os
import platform
import statistics

from eespec.bench.workloads import WORKLOADS_DIR, Workload, load_workload
from eespec.processes import ServerProcess, free_port, pin_to_core

__all__ = [
    "WORKLOADS_DIR",
    "ServerProcess",
    "Workload",
    "free_port",
    "pin_to_core",
    "load_workload",
    "machine_line",
    "summary",
]


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}
