"""Adaptive window vs fixed windows, through the network emulator, on the default pair.

    python -m eespec.bench.scripts.window_sweep --rtt-ms 20,100 --workloads code,robot --max-tokens 32 \\
        --json benchmarks/results/window_sweep.json

Cloud (`eespec serve`, one thread, core 0) and edge (this process, one thread, core 1) are separate
processes with the emulator between them. Each cell runs every prompt of the workloads once after one
warm-up prompt; tokens/s is generated tokens over wall time, summed over the prompts.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
from pathlib import Path

import torch

from edge_client import DraftEngine, EdgeClient
from eespec.bench.records import machine_line
from eespec.netem import LinkProfile, NetworkEmulator
from eespec.processes import ServerProcess, pin_to_core
from shared.defaults import DEFAULT_DRAFT, DEFAULT_EXIT_LAYERS, DEFAULT_TARGET
from shared.models import load_model
from shared.workloads import load_workload


async def run_cell(url, key, engine, tokenizer, prompts, window, max_tokens):
    total_tokens, total_s, windows, reasons = 0, 0.0, [], []
    async with EdgeClient(url, engine, tokenizer=tokenizer, api_key=key, window=window) as client:
        await client.generate(prompts[0], max_tokens=8)  # warm-up
        for ids in prompts:
            result = await client.generate(ids, max_tokens=max_tokens)
            total_tokens += result.metrics.generated_tokens
            total_s += result.metrics.total_s
            windows.extend(result.extra["windows"])
            reasons.append(result.extra["window_reason"])
    return {
        "tokens_per_s": total_tokens / total_s,
        "tokens": total_tokens,
        "seconds": total_s,
        "windows": windows,
        "last_reason": reasons[-1],
    }


async def sweep(args) -> list[dict]:
    pin_to_core(1)
    torch.set_num_threads(1)
    draft_model, tokenizer = load_model(args.draft)
    engine = DraftEngine(draft_model)
    prompts = []
    for name in args.workloads.split(","):
        workload = load_workload(name)
        prompts += [workload.encode(tokenizer, p) for p in workload.prompts[: args.prompts]]
    records = []
    with ServerProcess(args.target, exits=args.exits, core=0) as server:
        port, key = server.port, server.api_key
        for rtt in [float(x) for x in args.rtt_ms.split(",")]:
            profile = LinkProfile.symmetric(rtt_ms=rtt, jitter_ms=rtt * 0.1)
            async with NetworkEmulator("127.0.0.1", port, up=profile, down=profile, seed=0) as emu:
                for window in [*[int(w) for w in args.windows.split(",")], None]:
                    cell = await run_cell(emu.url(), key, engine, tokenizer, prompts, window, args.max_tokens)
                    cell |= {"rtt_ms": rtt, "window": window if window is not None else "adaptive"}
                    records.append(cell)
                    print(
                        f"rtt {rtt:>5.0f} ms  window {cell['window']!s:>8}: {cell['tokens_per_s']:.2f} tok/s"
                        + (f"  ({cell['last_reason']})" if window is None else ""),
                        flush=True,
                    )
    return records


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", default=DEFAULT_TARGET)
    parser.add_argument("--draft", default=DEFAULT_DRAFT)
    parser.add_argument("--exits", default=",".join(map(str, DEFAULT_EXIT_LAYERS)))
    parser.add_argument("--rtt-ms", default="20,100")
    parser.add_argument("--windows", default="1,2,4,8")
    parser.add_argument("--workloads", default="code,robot")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per workload")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    records = asyncio.run(sweep(args))
    report = {
        "command": "python -m eespec.bench.scripts.window_sweep "
        + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k != "json"
        ),
        "date": datetime.date.today().isoformat(),
        "machine": machine_line(1),
        "records": records,
    }
    print(
        "\n| RTT ms | "
        + " | ".join(str(r["window"]) for r in records if r["rtt_ms"] == records[0]["rtt_ms"])
        + " | adaptive / best fixed |"
    )
    for rtt in sorted({r["rtt_ms"] for r in records}):
        row = [r for r in records if r["rtt_ms"] == rtt]
        best = max(r["tokens_per_s"] for r in row if r["window"] != "adaptive")
        adaptive = next(r["tokens_per_s"] for r in row if r["window"] == "adaptive")
        print(
            f"| {rtt:.0f} | "
            + " | ".join(f"{r['tokens_per_s']:.2f}" for r in row)
            + f" | {adaptive / best:.1%} |"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
