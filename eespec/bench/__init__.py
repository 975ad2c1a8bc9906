"""`eespec bench`: the benchmark harness (see benchmarks/README.md).

    from eespec.bench import BenchConfig, run_bench
    outcome = run_bench(BenchConfig(target, draft, exits=(20,)), Path("bench-out"), command="...")

Importing this package stays light (no torch); `run_bench` loads the harness on first use.
"""

from __future__ import annotations

from typing import Any

from eespec.bench.cells import MODES, BenchConfig, CellSpec, plan_cells

__all__ = ["MODES", "BenchConfig", "CellSpec", "plan_cells", "run_bench"]


def run_bench(*args: Any, **kwargs: Any) -> Any:
    from eespec.bench.harness import run_bench as run

    return run(*args, **kwargs)
