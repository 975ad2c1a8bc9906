"""`eespec capacity`: clients one server serves at a latency objective, batched scheduler against FIFO.

The server runs as its own process pinned to core 0 (one thread); the clients run here on core 1. Live `sd`
generations of the workload's prompts are recorded once (`replay.py`), then 1 → N replay clients re-send
the recorded windows with the recorded pauses, so the figure measures the server and not 2 cores shared by
many drafting edges; one live client among the replays at one client count checks that replays load the
server like live edges do. Each client count runs against two servers in one invocation: the scheduler
batching up to `step_token_budget` rows per step, and the same server with a budget of 1 row (one session's
forward at a time: the FIFO worker of before).

Figures per (server, clients): aggregate tokens/s (all clients' tokens over the pass's wall time), p50 and
p95 of the per-client ms/token, cloud busy seconds per token (cost), divergences (a replay whose verdict
differed from the recording: must be 0). "Served at the SLO": the largest client count whose p95 ms/token
stays within `slo` × the single-client p95 of the same server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared.defaults import DEFAULT_DRAFT, DEFAULT_TARGET, DEFAULT_WINDOW

SERVERS = {"batched": 32, "fifo": 1}  # name → step_token_budget


@dataclass
class CapacityConfig:
    target: str = DEFAULT_TARGET
    draft: str = DEFAULT_DRAFT
    dtype: str = "auto"
    exits: str = ""
    workload: str = "code"
    prompts: int = 4
    max_tokens: int = 32
    window: int = DEFAULT_WINDOW
    clients: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    # The FIFO server only up to here: past saturation its passes take long and add nothing new.
    fifo_max_clients: int = 8
    servers: dict[str, int] = field(default_factory=lambda: dict(SERVERS))
    repeats: int = 1
    live_at: int | None = 8
    slo: float = 1.5
    # > 0: also a Ray Serve deployment of this many replicas (`eespec serve --ray`), with the batched budget,
    # pinned to the same server core: what Ray's proxy and splitting the sessions cost, on equal hardware.
    ray_replicas: int = 0
    out: Path = Path("benchmarks/results/capacity")


def client_figures(runs: Sequence[dict[str, Any]]) -> dict[str, float]:
    per_token_ms = [1000.0 * r["latency_s"] / r["tokens"] for r in runs]
    return {
        "p50_ms_per_token": float(np.percentile(per_token_ms, 50)),
        "p95_ms_per_token": float(np.percentile(per_token_ms, 95)),
    }


def served_at_slo(rows: Sequence[dict[str, Any]], slo: float) -> int | None:
    """The largest client count up to which every measured count keeps its p95 ms/token within `slo` × the
    single-client p95 (None without a single-client row)."""
    single = next((r for r in rows if r["clients"] == 1), None)
    if single is None:
        return None
    bound = slo * single["p95_ms_per_token"]
    served = 1
    for row in sorted(rows, key=lambda r: r["clients"]):
        if row["p95_ms_per_token"] > bound:
            break
        served = row["clients"]
    return served


async def _record(url: str, key: str, engine, tokenizer, prompt_ids, cfg: CapacityConfig) -> list[dict]:
    from eespec.bench.modes import RecordingEdgeClient, run_sd

    recordings = []
    async with RecordingEdgeClient(
        url, engine, tokenizer=tokenizer, api_key=key, window=cfg.window, preempt=False
    ) as client:
        await run_sd(client, prompt_ids[0], max_tokens=8, sampling=None)  # warm-up
        for ids in prompt_ids:
            run = await run_sd(client, ids, max_tokens=cfg.max_tokens, sampling=None)
            recording = run["recording"]
            recording["latency_s"] = run["latency_s"]
            recordings.append(recording)
    return recordings


async def _measure_server(
    name: str,
    url: str,
    key: str,
    recordings,
    engine,
    tokenizer,
    prompt_ids,
    cfg: CapacityConfig,
    log,
    replicas: int = 1,
) -> list[dict[str, Any]]:
    import httpx

    from eespec.bench.modes import RecordingEdgeClient, run_sd, scrape_busy_s
    from eespec.bench.replay import capacity_pass

    rows = []
    counts = [n for n in cfg.clients if name != "fifo" or n <= cfg.fifo_max_clients]
    async with httpx.AsyncClient(timeout=30) as http:
        for n in counts:
            aggregate, busy, runs = [], [], []
            for _ in range(cfg.repeats):
                busy0 = await scrape_busy_s(http, url, key, replicas)
                result = await capacity_pass(url, key, recordings, n)
                busy1 = await scrape_busy_s(http, url, key, replicas)
                aggregate.append(result["tokens"] / result["wall_s"])
                busy.append((busy1 - busy0) / result["tokens"])
                runs.extend(result["runs"])
            row: dict[str, Any] = {
                "server": name,
                "clients": n,
                "aggregate_tokens_per_s": statistics.median(aggregate),
                "cloud_busy_s_per_token": statistics.median(busy),
                "diverged": sum(1 for r in runs if r.get("diverged")),
                **client_figures(runs),
            }
            if cfg.live_at == n and n > 1:
                async with RecordingEdgeClient(
                    url, engine, tokenizer=tokenizer, api_key=key, window=cfg.window, preempt=False
                ) as client:

                    async def live(client=client) -> dict[str, Any]:
                        return await run_sd(client, prompt_ids[0], max_tokens=cfg.max_tokens, sampling=None)

                    checked = await capacity_pass(url, key, recordings, n, live=live)
                live_run = checked["runs"][0]
                replays = [r for r in checked["runs"][1:] if r["kind"] == "replay"]
                row["live_ms_per_token"] = 1000.0 * live_run["latency_s"] / live_run["tokens"]
                row["live_matches_recording"] = live_run["token_ids"] == recordings[0]["token_ids"]
                row["replay_ms_per_token_beside_live"] = client_figures(replays)["p50_ms_per_token"]
            log(
                f"{name:8s} clients {n:3d}: {row['aggregate_tokens_per_s']:6.1f} tok/s  "
                f"p95 {row['p95_ms_per_token']:7.1f} ms/token  "
                f"busy {row['cloud_busy_s_per_token'] * 1e3:6.1f} ms/token  diverged {row['diverged']}"
            )
            rows.append(row)
    return rows


@contextlib.contextmanager
def _server(cfg: CapacityConfig, budget: int, replicas: int | None = None):
    from eespec.processes import ServerProcess

    server = ServerProcess(
        cfg.target,
        exits=cfg.exits,
        threads=1,
        core=0,
        dtype=cfg.dtype,
        ray_replicas=replicas,
        env={"EESPEC_STEP_TOKEN_BUDGET": str(budget)},
    )
    server.start(timeout=900)  # a loaded 2-core machine can take minutes to load the model
    try:
        yield server
    finally:
        server.stop()


def run_capacity(cfg: CapacityConfig, log=print) -> dict[str, Any]:
    import torch
    from transformers.utils import logging as hf_logging

    from edge_client.draft import DraftEngine
    from eespec.bench.records import machine_line
    from eespec.processes import pin_to_core
    from shared.models import load_model, resolve_model
    from shared.workloads import load_workload

    hf_logging.disable_progress_bar()
    pin_to_core(1)
    torch.set_num_threads(1)
    resolve_model(cfg.target)
    draft_model, tokenizer = load_model(cfg.draft)
    engine = DraftEngine(draft_model)
    workload = load_workload(cfg.workload)
    prompt_ids = [workload.encode(tokenizer, p) for p in workload.prompts[: cfg.prompts]]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = os.getloadavg()
    recordings: list[dict[str, Any]] | None = None
    rows: list[dict[str, Any]] = []
    servers = dict(cfg.servers)
    if cfg.ray_replicas:
        servers[ray_server_name(cfg.ray_replicas)] = max(cfg.servers.values())
    for name, budget in servers.items():
        replicas = cfg.ray_replicas if name == ray_server_name(cfg.ray_replicas) else None
        with _server(cfg, budget, replicas) as server:
            if recordings is None:
                recording = _record(server.url, server.api_key, engine, tokenizer, prompt_ids, cfg)
                recordings = asyncio.run(recording)
            rows += asyncio.run(
                _measure_server(
                    name,
                    server.url,
                    server.api_key,
                    recordings,
                    engine,
                    tokenizer,
                    prompt_ids,
                    cfg,
                    log,
                    replicas or 1,
                )
            )
    assert recordings is not None
    summary = {}
    for name in servers:
        mine = [r for r in rows if r["server"] == name]
        by_n = {r["clients"]: r for r in mine}
        entry: dict[str, Any] = {"served_at_slo": served_at_slo(mine, cfg.slo)}
        if 1 in by_n and 8 in by_n:
            one, eight = by_n[1], by_n[8]
            entry["throughput_8_over_1"] = eight["aggregate_tokens_per_s"] / one["aggregate_tokens_per_s"]
            entry["cost_8_over_1"] = eight["cloud_busy_s_per_token"] / one["cloud_busy_s_per_token"]
        summary[name] = entry
    report = {
        "config": asdict(cfg) | {"out": str(cfg.out)},
        "machine": machine_line(1),
        "started": started,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "recordings": [
            {"tokens": len(r["token_ids"]), "rounds": len(r["rounds"]), "latency_s": r["latency_s"]}
            for r in recordings
        ],
        "rows": rows,
        "summary": summary,
        "command": command_line(cfg),
    }
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "capacity.json").write_text(json.dumps(report, indent=1) + "\n")
    (cfg.out / "capacity.md").write_text(markdown(report))
    plot(report, cfg.out / "capacity.png")
    return report


def ray_server_name(replicas: int) -> str:
    return f"ray-{replicas}"


def command_line(cfg: CapacityConfig) -> str:
    clients = ",".join(map(str, cfg.clients))
    ray = f" --ray-replicas {cfg.ray_replicas}" if cfg.ray_replicas else ""
    return (
        f"eespec capacity --workload {cfg.workload} --prompts {cfg.prompts} --max-tokens {cfg.max_tokens} "
        f"--window {cfg.window} --clients {clients} --fifo-max-clients {cfg.fifo_max_clients} "
        f"--repeats {cfg.repeats}{ray}"
    )


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Capacity ({report['started']})",
        "",
        f"`{report['command']}` — {report['machine']}; load average before "
        f"{report['load_before'][0]:.1f}, after {report['load_after'][0]:.1f}.",
        "",
        "| server | clients | tokens/s | p50 ms/token | p95 ms/token | cloud busy ms/token | diverged |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['server']} | {r['clients']} | {r['aggregate_tokens_per_s']:.1f} "
            f"| {r['p50_ms_per_token']:.0f} "
            f"| {r['p95_ms_per_token']:.0f} | {r['cloud_busy_s_per_token'] * 1e3:.0f} | {r['diverged']} |"
        )
    lines.append("")
    for name, entry in report["summary"].items():
        parts = [f"served at the SLO (p95 ≤ {report['config']['slo']}× single): {entry['served_at_slo']}"]
        if "throughput_8_over_1" in entry:
            parts.append(f"throughput 8 / 1 clients {entry['throughput_8_over_1']:.2f}×")
            parts.append(f"cloud cost per token 8 / 1 {entry['cost_8_over_1']:.2f}×")
        lines.append(f"* {name}: " + ", ".join(parts))
    for r in report["rows"]:
        if "live_ms_per_token" in r:
            lines.append(
                f"* live check ({r['server']}, {r['clients']} clients): "
                f"live {r['live_ms_per_token']:.0f} ms/token "
                f"vs replays {r['replay_ms_per_token_beside_live']:.0f} (median), live output = recording: "
                f"{r['live_matches_recording']}"
            )
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name in dict.fromkeys(r["server"] for r in report["rows"]):
        rows = [r for r in report["rows"] if r["server"] == name]
        xs = [r["clients"] for r in rows]
        left.plot(xs, [r["aggregate_tokens_per_s"] for r in rows], marker="o", label=name)
        right.plot(xs, [r["p95_ms_per_token"] for r in rows], marker="o", label=name)
    for ax, title in ((left, "aggregate tokens/s"), (right, "p95 ms/token per client")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("replay clients")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    right.set_yscale("log")
    fig.suptitle(f"capacity, one server core ({report['started']}, load {report['load_before'][0]:.1f})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
