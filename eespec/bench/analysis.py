"""Figures derived from records measured side by side in one run: speed-ups over cloud-ar, the
pre-drafting ceiling and how much of it sd-preempt reached, cloud-cost ratios, the break-even RTT."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def median_of(record: dict[str, Any] | None, figure: str) -> float | None:
    if record is None:
        return None
    value = record.get(figure)
    return None if value is None else float(value["median"])


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0.0) else None


def rtt_cells(
    records: Sequence[dict[str, Any]], window: int, sampling: str = "greedy"
) -> list[dict[str, Any]]:
    """Single-client live cells of the RTT slice: networked modes at `window` (or without one), local
    modes once (rtt_ms null)."""
    return [
        r
        for r in records
        if r["sampling"] == sampling
        and r["concurrency"] == 1
        and r["driver"] == "live"
        and r["window"] in (window, None)
    ]


def lookup(
    records: Sequence[dict[str, Any]], mode: str, workload: str, rtt_ms: float | None
) -> dict[str, Any] | None:
    for r in records:
        if r["mode"] == mode and r["workload"] == workload and r["rtt_ms"] == rtt_ms:
            return r
    return None


def rtts_of(records: Sequence[dict[str, Any]]) -> list[float]:
    return sorted({float(r["rtt_ms"]) for r in records if r["rtt_ms"] is not None})


def workloads_of(records: Sequence[dict[str, Any]]) -> list[str]:
    seen: list[str] = []
    for r in records:
        if r["workload"] not in seen:
            seen.append(r["workload"])
    return seen


def cell_at(records: Sequence[dict[str, Any]], mode: str, workload: str, rtt: float) -> dict[str, Any] | None:
    """The mode's cell at `rtt`, or its network-free cell (local modes do not depend on the RTT)."""
    return lookup(records, mode, workload, rtt) or lookup(records, mode, workload, None)


def speedups(
    records: Sequence[dict[str, Any]], window: int, sampling: str = "greedy"
) -> list[dict[str, Any]]:
    """Per workload, RTT and mode: tokens/s over cloud-ar's at the same RTT, and the cloud-cost ratio."""
    cells = rtt_cells(records, window, sampling)
    rows = []
    for workload in workloads_of(cells):
        for rtt in rtts_of(cells):
            base = lookup(cells, "cloud-ar", workload, rtt)
            if base is None:
                continue
            for mode in sorted({r["mode"] for r in cells}):
                cell = cell_at(cells, mode, workload, rtt)
                if cell is None:
                    continue
                rows.append(
                    {
                        "workload": workload,
                        "rtt_ms": rtt,
                        "mode": mode,
                        "speedup": _ratio(median_of(cell, "tokens_per_s"), median_of(base, "tokens_per_s")),
                        "cost_ratio": _ratio(
                            median_of(cell, "cloud_busy_s_per_token"),
                            median_of(base, "cloud_busy_s_per_token"),
                        ),
                    }
                )
    return rows


def ceilings(
    records: Sequence[dict[str, Any]], window: int, sampling: str = "greedy"
) -> list[dict[str, Any]]:
    """DESIGN.md: with drafting d, verification v and RTT r per round, pre-drafting saves at best d of
    every d + v + r. d, v and r come from the sd cell (no pre-drafting) at that RTT; the gain is
    sd-preempt against sd in the same run."""
    cells = rtt_cells(records, window, sampling)
    rows = []
    for workload in workloads_of(cells):
        for rtt in rtts_of(cells):
            sd = lookup(cells, "sd", workload, rtt)
            pre = lookup(cells, "sd-preempt", workload, rtt)
            if sd is None:
                continue
            d = median_of(sd, "draft_ms_per_round")
            v = median_of(sd, "server_ms_per_round")
            r = median_of(sd, "rtt_ms_measured")
            ceiling = d / (d + v + r) if None not in (d, v, r) and (d + v + r) > 0 else None  # type: ignore[operator]
            sd_tps, pre_tps = median_of(sd, "tokens_per_s"), median_of(pre, "tokens_per_s")
            saving = 1.0 - sd_tps / pre_tps if sd_tps and pre_tps else None
            cloud = median_of(lookup(cells, "cloud-ar", workload, rtt), "tokens_per_s")
            rows.append(
                {
                    "workload": workload,
                    "rtt_ms": rtt,
                    "draft_ms": d,
                    "verify_ms": v,
                    "rtt_ms_measured": r,
                    "ceiling_saving": ceiling,
                    "ceiling_speedup": 1.0 / (1.0 - ceiling) if ceiling is not None and ceiling < 1 else None,
                    "preempt_over_sd": _ratio(pre_tps, sd_tps),
                    "preempt_saving": saving,
                    "reached": _ratio(saving, ceiling),
                    "preempt_over_cloud": _ratio(pre_tps, cloud),
                    "predraft_hit_rate": median_of(pre, "predraft_hit_rate"),
                }
            )
    return rows


def break_even(records: Sequence[dict[str, Any]], window: int, mode: str = "sd-preempt") -> dict[str, str]:
    """Per workload: the first RTT at which `mode` is no faster than cloud-ar, in words."""
    out = {}
    rows = [r for r in speedups(records, window) if r["mode"] == mode and r["speedup"] is not None]
    for workload in workloads_of(rows):
        mine = sorted((r for r in rows if r["workload"] == workload), key=lambda r: r["rtt_ms"])
        losing = [r["rtt_ms"] for r in mine if r["speedup"] <= 1.0]
        if not losing:
            out[workload] = f"pays at every RTT measured (up to {mine[-1]['rtt_ms']:g} ms)"
        elif losing[0] == mine[0]["rtt_ms"]:
            out[workload] = f"never pays (slower than cloud-ar already at {losing[0]:g} ms)"
        else:
            out[workload] = f"stops paying at {losing[0]:g} ms"
    return out


def capacity(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = [r for r in records if r["driver"] == "replay"]
    return sorted(rows, key=lambda r: (r["workload"], r["concurrency"]))
