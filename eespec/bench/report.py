"""The markdown report of a run (`results.md`) and the summary printed at the end."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eespec.bench import analysis
from eespec.bench.cells import MODES


def fmt(figure: dict[str, float] | None, scale: float = 1.0, digits: int = 2, spread: bool = True) -> str:
    if figure is None:
        return "–"
    med = figure["median"] * scale
    if not spread or figure["min"] == figure["max"]:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} [{figure['min'] * scale:.{digits}f}–{figure['max'] * scale:.{digits}f}]"


def _num(value: float | None, digits: int = 2, pct: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:.0%}" if pct else f"{value:.{digits}f}"


def _same(record: dict[str, Any]) -> str:
    value = record["output_matches_target"]
    if value is None:
        return "n/a (sampled)" if record["sampling"] == "sampled" else "–"
    if not record["exact_mode"]:
        return "yes" if value else "no (draft alone)"
    return "yes" if value else "**NO**"


def _order(record: dict[str, Any]) -> tuple:
    return (
        record["driver"],
        record["sampling"],
        record["workload"],
        MODES.index(record["mode"]),
        -1 if record["rtt_ms"] is None else record["rtt_ms"],
        str(record["window"]),
        record["concurrency"],
    )


def cells_table(records: Sequence[dict[str, Any]]) -> list[str]:
    head = (
        "| mode | workload | sampling | RTT ms | window | clients | ms/token | tokens/s | TTFT s | "
        "accepted/round | acceptance | early agree | pre-draft hits | bytes up / down per gen. | "
        "cloud ms/token | same as generate() |"
    )
    lines = [head, "|" + " --- |" * 3 + " ---: |" * 12 + " --- |"]
    for r in sorted(records, key=_order):
        rtt = "–" if r["rtt_ms"] is None else f"{r['rtt_ms']:g}"
        tps = r["aggregate_tokens_per_s"] if r["driver"] == "replay" else r["tokens_per_s"]
        up, down = r["bytes_up"], r["bytes_down"]
        traffic = "–" if up is None else f"{up['median']:.0f} / {down['median']:.0f}" if down else "–"
        lines.append(
            f"| {r['mode']} | {r['workload']} | {r['sampling']} | {rtt} | {r['window'] or '–'} | "
            f"{r['concurrency']}{' (replay)' if r['driver'] == 'replay' else ''} | "
            f"{fmt(r['ms_per_token'], digits=1)} | {fmt(tps, digits=1, spread=False)} | "
            f"{fmt(r['ttft_s'], spread=False)} | {fmt(r['mean_accepted_len'], spread=False)} | "
            f"{fmt(r['acceptance_rate'], spread=False)} | {fmt(r['early_exit_agreement'], spread=False)} | "
            f"{fmt(r['predraft_hit_rate'], spread=False)} | {traffic} | "
            f"{fmt(r['cloud_busy_s_per_token'], 1000.0, 1, spread=False)} | {_same(r)} |"
        )
    return lines


def speedup_tables(records: Sequence[dict[str, Any]], window: int) -> list[str]:
    rows = analysis.speedups(records, window)
    if not rows:
        return []
    rtts = sorted({r["rtt_ms"] for r in rows})
    out = [
        f"## Speed-up over cloud-ar (tokens/s ratio, greedy, window {window}) and cloud cost per token "
        "relative to cloud-ar",
        "",
    ]
    for workload in analysis.workloads_of(rows):
        out += [f"**{workload}**", ""]
        out.append("| mode | " + " | ".join(f"RTT {t:g} ms" for t in rtts) + " | cloud cost / cloud-ar |")
        out.append("| --- |" + " ---: |" * (len(rtts) + 1))
        for mode in MODES:
            mine = {r["rtt_ms"]: r for r in rows if r["workload"] == workload and r["mode"] == mode}
            if not mine:
                continue
            costs = [r["cost_ratio"] for r in mine.values() if r["cost_ratio"] is not None]
            cost = f"{min(costs):.2f}–{max(costs):.2f}" if costs else "–"
            if costs and min(costs) == max(costs):
                cost = f"{costs[0]:.2f}"
            cells = " | ".join(_num(mine[t]["speedup"]) + "×" if t in mine else "–" for t in rtts)
            out.append(f"| {mode} | {cells} | {cost} |")
        out.append("")
    return out


def ceiling_table(records: Sequence[dict[str, Any]], window: int) -> list[str]:
    rows = analysis.ceilings(records, window)
    if not rows:
        return []
    out = [
        f"## Pre-drafting ceiling (greedy, window {window})",
        "",
        "d = drafting, v = verification (server), r = measured RTT, per round, from the `sd` cell; the "
        "ceiling is the share of time pre-drafting can hide at best, d / (d + v + r) (DESIGN.md); "
        "*saved* is 1 − tokens/s(sd) / tokens/s(sd-preempt), measured in the same run.",
        "",
        "| workload | RTT ms | d ms | v ms | r ms | ceiling | saved | reached | sd-preempt / sd | "
        "sd-preempt / cloud-ar | pre-draft hits |",
        "| --- |" + " ---: |" * 10,
    ]
    for r in rows:
        out.append(
            f"| {r['workload']} | {r['rtt_ms']:g} | {_num(r['draft_ms'], 1)} | {_num(r['verify_ms'], 1)} | "
            f"{_num(r['rtt_ms_measured'], 1)} | {_num(r['ceiling_saving'], pct=True)} | "
            f"{_num(r['preempt_saving'], pct=True)} | {_num(r['reached'], pct=True)} | "
            f"{_num(r['preempt_over_sd'])}× | {_num(r['preempt_over_cloud'])}× | "
            f"{_num(r['predraft_hit_rate'], pct=True)} |"
        )
    out.append("")
    return out


def window_table(records: Sequence[dict[str, Any]]) -> list[str]:
    cells = [
        r
        for r in records
        if r["mode"] in ("sd", "sd-preempt")
        and r["driver"] == "live"
        and r["sampling"] == "greedy"
        and r["concurrency"] == 1
    ]
    by_rtt: dict[float, list[dict[str, Any]]] = {}
    for r in cells:
        by_rtt.setdefault(r["rtt_ms"], []).append(r)
    sweeps = {rtt: rows for rtt, rows in by_rtt.items() if len({str(r["window"]) for r in rows}) > 1}
    if not sweeps:
        return []
    out = ["## Window sweep (tokens/s, greedy)", ""]
    for rtt, rows in sorted(sweeps.items()):
        windows = sorted({r["window"] for r in rows}, key=lambda w: (isinstance(w, str), w))
        out.append(f"| mode @ RTT {rtt:g} ms | workload | " + " | ".join(f"w={w}" for w in windows) + " |")
        out.append("| --- | --- |" + " ---: |" * len(windows))
        for mode in ("sd", "sd-preempt"):
            for workload in analysis.workloads_of(rows):
                mine = {r["window"]: r for r in rows if r["mode"] == mode and r["workload"] == workload}
                if mine:
                    vals = " | ".join(
                        fmt(mine[w]["tokens_per_s"], spread=False) if w in mine else "–" for w in windows
                    )
                    out.append(f"| {mode} | {workload} | {vals} |")
        out.append("")
    return out


def capacity_table(records: Sequence[dict[str, Any]]) -> list[str]:
    rows = analysis.capacity(records)
    if not rows:
        return []
    out = [
        "## Capacity (replay clients against one server)",
        "",
        "| workload | RTT ms | clients | aggregate tokens/s | per-client latency s | per-client ms/token | "
        "cloud ms/token | live check: live / replay latency | diverged |",
        "| --- |" + " ---: |" * 7 + " --- |",
    ]
    for r in rows:
        check = r["extra"].get("live_check") or {}
        ratio = check.get("live_over_replay_latency")
        out.append(
            f"| {r['workload']} | {r['rtt_ms']:g} | {r['concurrency']} | "
            f"{fmt(r['aggregate_tokens_per_s'], digits=1)} | {fmt(r['latency_s'])} | "
            f"{fmt(r['ms_per_token'], digits=1, spread=False)} | "
            f"{fmt(r['cloud_busy_s_per_token'], 1000.0, 1, spread=False)} | "
            f"{_num(ratio) + '×' if ratio is not None else '–'} | {r['extra'].get('diverged', 0)} |"
        )
    out.append("")
    return out


def markdown(records: Sequence[dict[str, Any]], meta: dict[str, Any], window: int) -> str:
    lines = [
        "# eespec bench",
        "",
        f"* command: `{meta['command']}`",
        f"* date: {meta['date']}",
        f"* machine: {meta['machine']}",
        f"* target: `{meta['target']}` ({meta.get('dtype', 'float32')}), draft: `{meta['draft']}`, "
        "exits after layers "
        f"{', '.join(map(str, meta['exits'])) or 'none'}",
        f"* config {meta['config_id']}: {meta['prompts']} prompt(s) per workload × {meta['repeats']} "
        f"repeat(s), up to {meta['max_tokens']} tokens; figures are medians [min–max] over those runs",
    ]
    if meta.get("note"):
        lines.append(f"* note: {meta['note']}")
    lines += ["", "## Cells", "", *cells_table(records), ""]
    lines += speedup_tables(records, window)
    lines += ceiling_table(records, window)
    lines += window_table(records)
    lines += capacity_table(records)
    even = analysis.break_even(records, window)
    if even:
        lines += ["## Where edge–cloud speculation stops paying (sd-preempt vs cloud-ar)", ""]
        lines += [f"* {workload}: {text}" for workload, text in even.items()]
        lines.append("")
    return "\n".join(lines)
