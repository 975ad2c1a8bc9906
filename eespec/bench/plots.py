"""PNG plots of a run (matplotlib, Agg): ms/token vs RTT per mode, speed-up over cloud-ar vs RTT, cloud
cost per token per mode, capacity, and the window sweep. Each returns the path it wrote, or None when
the records hold nothing to draw."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eespec.bench import analysis
from eespec.bench.cells import MODES, NETWORKED

STYLE = {
    "cloud-ar": ("tab:blue", "o"),
    "edge-ar": ("tab:gray", "x"),
    "sd": ("tab:orange", "s"),
    "sd-preempt": ("tab:red", "D"),
    "colocated-sd": ("tab:green", "^"),
    "hf-assisted": ("tab:purple", "v"),
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(n: int):
    plt = _pyplot()
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 3.8), squeeze=False, sharey=False)
    return plt, fig, list(axes[0])


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _per_rtt(ax, records, workload, rtts, value_of, ylabel) -> None:
    for mode in MODES:
        color, marker = STYLE[mode]
        if mode in NETWORKED:
            points = [(t, value_of(analysis.lookup(records, mode, workload, t))) for t in rtts]
            points = [(t, v) for t, v in points if v is not None]
            if points:
                ax.plot(*zip(*points, strict=True), color=color, marker=marker, label=mode)
        else:
            value = value_of(analysis.lookup(records, mode, workload, None))
            if value is not None:  # no network: the same at every RTT
                ax.axhline(value, color=color, linestyle="--", label=f"{mode} (no network)")
    ax.set_xlabel("RTT ms")
    ax.set_ylabel(ylabel)
    ax.set_title(workload)
    ax.grid(alpha=0.3)


def ms_per_token_vs_rtt(records: Sequence[dict[str, Any]], window: int, path: Path) -> Path | None:
    cells = analysis.rtt_cells(records, window)
    rtts, workloads = analysis.rtts_of(cells), analysis.workloads_of(cells)
    if not rtts or not workloads:
        return None
    plt, fig, axes = _grid(len(workloads))
    for ax, workload in zip(axes, workloads, strict=True):
        _per_rtt(ax, cells, workload, rtts, lambda r: analysis.median_of(r, "ms_per_token"), "ms per token")
    axes[-1].legend(fontsize=7)
    fig.suptitle(f"ms per token vs RTT (greedy, window {window}, medians)", fontsize=10)
    return _save(plt, fig, path)


def speedup_vs_rtt(records: Sequence[dict[str, Any]], window: int, path: Path) -> Path | None:
    rows = analysis.speedups(records, window)
    if not rows:
        return None
    workloads = analysis.workloads_of(rows)
    plt, fig, axes = _grid(len(workloads))
    for ax, workload in zip(axes, workloads, strict=True):
        for mode in MODES:
            if mode == "cloud-ar":
                continue
            pts = [
                (r["rtt_ms"], r["speedup"]) for r in rows if r["workload"] == workload and r["mode"] == mode
            ]
            pts = [p for p in pts if p[1] is not None]
            if pts:
                color, marker = STYLE[mode]
                ax.plot(*zip(*sorted(pts), strict=True), color=color, marker=marker, label=mode)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xlabel("RTT ms")
        ax.set_ylabel("tokens/s ÷ cloud-ar's")
        ax.set_title(workload)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7)
    fig.suptitle(f"speed-up over cloud-ar (greedy, window {window})", fontsize=10)
    return _save(plt, fig, path)


def cloud_cost(records: Sequence[dict[str, Any]], window: int, rtt: float, path: Path) -> Path | None:
    cells = analysis.rtt_cells(records, window)
    workloads = analysis.workloads_of(cells)
    modes = [m for m in MODES if any(r["mode"] == m for r in cells)]
    if not workloads or not modes:
        return None
    plt, fig, axes = _grid(1)
    ax = axes[0]
    width = 0.8 / len(workloads)
    for i, workload in enumerate(workloads):
        values = []
        for mode in modes:
            cell = analysis.cell_at(cells, mode, workload, rtt)
            value = analysis.median_of(cell, "cloud_busy_s_per_token")
            values.append(1000.0 * value if value is not None else 0.0)
        xs = [j + i * width for j in range(len(modes))]
        ax.bar(xs, values, width=width, label=workload)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(modes))], modes, rotation=20, fontsize=8)
    ax.set_ylabel("cloud busy ms per generated token")
    ax.set_title(f"cloud cost per token (greedy, window {window}, RTT {rtt:g} ms)", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    return _save(plt, fig, path)


def capacity(records: Sequence[dict[str, Any]], path: Path) -> Path | None:
    rows = analysis.capacity(records)
    if not rows:
        return None
    plt, fig, axes = _grid(2)
    for workload in analysis.workloads_of(rows):
        mine = [r for r in rows if r["workload"] == workload]
        xs = [r["concurrency"] for r in mine]
        agg = [analysis.median_of(r, "aggregate_tokens_per_s") for r in mine]
        lat = [r["latency_s"] for r in mine]
        axes[0].plot(xs, agg, marker="o", label=workload)
        axes[1].errorbar(
            xs,
            [f["median"] for f in lat],
            yerr=[[f["median"] - f["min"] for f in lat], [f["max"] - f["median"] for f in lat]],
            marker="o",
            capsize=3,
            label=workload,
        )
    axes[0].set_ylabel("aggregate tokens/s")
    axes[1].set_ylabel("per-client latency s (median, min–max)")
    ticks = sorted({r["concurrency"] for r in rows})
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlabel("concurrent clients (replay)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("capacity: sd replay clients against one server", fontsize=10)
    return _save(plt, fig, path)


def window_sweep(records: Sequence[dict[str, Any]], rtt: float, path: Path) -> Path | None:
    cells = [
        r
        for r in records
        if r["mode"] in ("sd", "sd-preempt")
        and r["rtt_ms"] == rtt
        and r["driver"] == "live"
        and r["sampling"] == "greedy"
    ]
    windows = sorted({r["window"] for r in cells}, key=lambda w: (isinstance(w, str), w))
    if len(windows) < 2:
        return None
    plt, fig, axes = _grid(1)
    ax = axes[0]
    labels = [str(w) for w in windows]
    for mode in ("sd", "sd-preempt"):
        for workload in analysis.workloads_of(cells):
            mine = {r["window"]: r for r in cells if r["mode"] == mode and r["workload"] == workload}
            ys = [analysis.median_of(mine.get(w), "tokens_per_s") for w in windows]
            pts = [(i, y) for i, y in enumerate(ys) if y is not None]
            if pts:
                color, marker = STYLE[mode]
                style = "-" if mode == "sd-preempt" else ":"
                ax.plot(
                    *zip(*pts, strict=True), style, color=color, marker=marker, label=f"{mode} {workload}"
                )
    ax.set_xticks(range(len(windows)), labels)
    ax.set_xlabel("window (draft tokens per round)")
    ax.set_ylabel("tokens/s")
    ax.set_title(f"window sweep at RTT {rtt:g} ms (greedy)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    return _save(plt, fig, path)


def write_plots(
    records: Sequence[dict[str, Any]], out: Path, *, window: int, cost_rtt: float, window_rtt: float
) -> list[Path]:
    out = Path(out)
    made = [
        ms_per_token_vs_rtt(records, window, out / "ms_per_token_vs_rtt.png"),
        speedup_vs_rtt(records, window, out / "speedup_vs_rtt.png"),
        cloud_cost(records, window, cost_rtt, out / "cloud_cost_per_token.png"),
        capacity(records, out / "capacity.png"),
        window_sweep(records, window_rtt, out / "window_sweep.png"),
    ]
    return [p for p in made if p is not None]
