"""How long another session's round waits while a long prompt is prefilled, chunked against one-shot.

    python -m eespec.bench.scripts.prefill_interference --prompt-tokens 4096 --repeats 3

Two servers, one after the other, each its own process pinned to core 0 with one thread: the default
(`EESPEC_PREFILL_CHUNK_TOKENS`, 256) and one that prefills in a single forward (0). Against each, a victim
replays a recorded greedy `sd` generation of a short prompt (`replay.py`: the same windows, the same pauses)
while an intruder, `--intruder-delay` seconds in, sends a `--prompt-tokens` prompt and waits for `started`.
Figures per server: the victim's round latency (send → verdict) in rounds that overlapped the intruder's
prefill (median, p95, max) beside the rounds that did not, the intruder's time to `started`, and the
victim's verdicts checked against the recording (greedy verdicts are a function of the committed tokens, so
any difference is a defect).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from shared.defaults import DEFAULT_DRAFT, DEFAULT_TARGET, DEFAULT_WINDOW

SERVERS = {"chunked (256)": 256, "one-shot (0)": 0}


@contextlib.contextmanager
def _server(target: str, chunk: int):
    from eespec.processes import ServerProcess

    server = ServerProcess(target, threads=1, core=0, env={"EESPEC_PREFILL_CHUNK_TOKENS": str(chunk)})
    server.start(timeout=900)
    try:
        yield server
    finally:
        server.stop()


async def _intruder(url: str, key: str, prompt_ids: list[int], delay_s: float) -> dict[str, float]:
    from websockets.asyncio.client import connect

    await asyncio.sleep(delay_s)
    ws_url = url.replace("http://", "ws://", 1) + "/v1/speculate"
    headers = {"Authorization": f"Bearer {key}"}
    async with connect(ws_url, additional_headers=headers, max_size=None) as ws:
        await ws.send(json.dumps({"type": "hello", "protocol": 1}))
        json.loads(await ws.recv())
        t0 = time.perf_counter()
        await ws.send(json.dumps({"type": "start", "token_ids": prompt_ids, "max_tokens": 1}))
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] == "error":
                raise RuntimeError(f"the intruder's start failed: {frame}")
            if frame["type"] == "started":
                return {"t_start": t0, "t_started": time.perf_counter()}


async def _one_pass(url: str, key: str, recording: dict, intruder_ids: list[int], delay_s: float) -> dict:
    from eespec.bench.replay import replay_client

    victim, intruder = await asyncio.gather(
        replay_client(url, key, recording), _intruder(url, key, intruder_ids, delay_s)
    )
    overlapped, clear = [], []
    for sent, answered in victim["round_times"]:
        hit = sent < intruder["t_started"] and answered > intruder["t_start"]
        (overlapped if hit else clear).append(1000.0 * (answered - sent))
    return {
        "overlapped_ms": overlapped,
        "clear_ms": clear,
        "intruder_prefill_s": intruder["t_started"] - intruder["t_start"],
        "diverged": victim["diverged"],
    }


def _figures(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "median": None, "p95": None, "max": None}
    return {
        "n": len(values),
        "median": statistics.median(values),
        "p95": float(np.percentile(values, 95)),
        "max": max(values),
    }


def measure(args) -> dict[str, Any]:
    import torch
    from transformers.utils import logging as hf_logging

    from edge_client.draft import DraftEngine
    from eespec.bench.capacity import CapacityConfig, _record
    from eespec.bench.records import machine_line
    from eespec.processes import pin_to_core
    from shared.models import load_model, resolve_model
    from shared.workloads import load_workload

    hf_logging.disable_progress_bar()
    pin_to_core(1)
    torch.set_num_threads(1)
    resolve_model(args.target)
    draft_model, tokenizer = load_model(args.draft)
    engine = DraftEngine(draft_model)
    workload = load_workload(args.workload)
    victim_ids = workload.encode(tokenizer, workload.prompts[0])
    rng = random.Random(0)
    low = 1000  # ordinary vocabulary, away from special tokens
    intruder_ids = [rng.randrange(low, tokenizer.vocab_size) for _ in range(args.prompt_tokens)]
    cfg = CapacityConfig(target=args.target, draft=args.draft, max_tokens=args.max_tokens, window=args.window)
    recording = None
    rows = []
    for name, chunk in SERVERS.items():
        with _server(args.target, chunk) as server:
            if recording is None:
                recording = asyncio.run(
                    _record(server.url, server.api_key, engine, tokenizer, [victim_ids], cfg)
                )[0]
            passes = [
                asyncio.run(
                    _one_pass(server.url, server.api_key, recording, intruder_ids, args.intruder_delay)
                )
                for _ in range(args.repeats)
            ]
        row = {
            "server": name,
            "prefill_chunk_tokens": chunk,
            "overlapped_round_ms": _figures([v for p in passes for v in p["overlapped_ms"]]),
            "clear_round_ms": _figures([v for p in passes for v in p["clear_ms"]]),
            "intruder_prefill_s": statistics.median(p["intruder_prefill_s"] for p in passes),
            "diverged": sum(1 for p in passes if p["diverged"]),
        }
        o, c = row["overlapped_round_ms"], row["clear_round_ms"]
        print(
            f"{name:14s} rounds during the prefill: n={o['n']} median {o['median'] or 0:7.0f} ms  "
            f"max {o['max'] or 0:7.0f} ms | other rounds median {c['median'] or 0:5.0f} ms | "
            f"prefill {row['intruder_prefill_s']:5.2f} s | diverged {row['diverged']}",
            flush=True,
        )
        rows.append(row)
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_line(1),
        "load_after": os.getloadavg(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "victim_rounds": len(recording["rounds"]) if recording else 0,
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default=DEFAULT_TARGET)
    parser.add_argument("--draft", default=DEFAULT_DRAFT)
    parser.add_argument("--workload", default="code")
    parser.add_argument("--prompt-tokens", type=int, default=4096)
    parser.add_argument("--max-tokens", type=int, default=96, help="the victim's generation length")
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW)
    parser.add_argument("--intruder-delay", type=float, default=0.5, help="seconds into the victim's replay")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/prefill_interference.json"))
    args = parser.parse_args()
    report = measure(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
