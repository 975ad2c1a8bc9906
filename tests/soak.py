"""Soak: a real `eespec serve` process under N clients for M minutes (issue 12's standing soak).

    nice -n 10 python -m tests.soak --minutes 30 --clients 8            # tiny seeded models, no download
    nice -n 10 python -m tests.soak --minutes 30 --target smollm2-135m-instruct --draft smollm2-135m-draft

Three in four clients are edge clients over the websocket (greedy and sampled, alternating), the rest
stream OpenAI completions. Every greedy output is checked against transformers' `generate()`. Each
minute (eight windows in a short run) prints tokens/s, the server's RSS and the error count; the summary
says whether throughput was steady (slowest window ≥ 0.7 × median), memory flat (last window's RSS ≤ first
window's + 10 %) and errors zero. Figures for benchmarks/RESULTS.md come from the 30-minute run; record
`uptime`'s load beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from edge_client.client import EdgeClient
from edge_client.draft import DraftEngine
from eespec.processes import ServerProcess
from shared.models import load_model
from shared.sampling import SamplingParams
from shared.tiny import save_tiny_pair
from tests.helpers import oracle_greedy

PROMPTS = ["Hello there", "def fibonacci(n):", "The robot walks to", "Write a haiku about rain"]
KEY = "soak-key"


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Tally:
    def __init__(self) -> None:
        self.tokens = 0
        self.errors: list[str] = []
        self.mismatches = 0
        self.requests = 0


async def edge_client(
    i: int, url: str, draft_path: str, oracle: dict, max_tokens: int, stop_at: float, tally: Tally
):
    model, tok = load_model(draft_path)
    engine = DraftEngine(model)
    n = 0
    async with EdgeClient(url, engine, tokenizer=tok, api_key=KEY) as client:
        while time.monotonic() < stop_at:
            prompt = PROMPTS[(i + n) % len(PROMPTS)]
            ids = tok(prompt).input_ids
            sampled = (i + n) % 2 == 1
            sampling = SamplingParams(temperature=0.8, top_p=0.95, seed=n) if sampled else SamplingParams()
            try:
                result = await client.generate(ids, max_tokens=max_tokens, sampling=sampling)
            except Exception as exc:  # counted, and the soak goes on
                tally.errors.append(f"edge {i}: {type(exc).__name__}: {exc}")
                continue
            finally:
                n += 1
            tally.requests += 1
            tally.tokens += len(result.token_ids)
            if not sampled and result.token_ids != oracle[prompt]:
                tally.mismatches += 1


async def http_client(i: int, url: str, max_tokens: int, stop_at: float, tally: Tally):
    n = 0
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120
    ) as http:
        while time.monotonic() < stop_at:
            body = {"prompt": PROMPTS[(i + n) % len(PROMPTS)], "max_tokens": max_tokens, "stream": True}
            body["stream_options"] = {"include_usage": True}
            n += 1
            try:
                async with http.stream("POST", "/v1/completions", json=body) as r:
                    lines = [line async for line in r.aiter_lines() if line.startswith("data: ")]
                if r.status_code != 200 or lines[-1] != "data: [DONE]":
                    tally.errors.append(f"http {i}: status {r.status_code}")
                    continue
                usage = json.loads(lines[-2].removeprefix("data: "))["usage"]
                tally.tokens += usage["completion_tokens"]
                tally.requests += 1
            except Exception as exc:
                tally.errors.append(f"http {i}: {type(exc).__name__}: {exc}")


async def soak(url: str, pid: int, draft: str, oracle: dict, clients: int, minutes: float, max_tokens: int):
    tally = Tally()
    stop_at = time.monotonic() + minutes * 60
    n_edge = max(1, clients * 3 // 4)
    tasks = [
        asyncio.create_task(edge_client(i, url, draft, oracle, max_tokens, stop_at, tally))
        for i in range(n_edge)
    ]
    tasks += [
        asyncio.create_task(http_client(i, url, max_tokens, stop_at, tally)) for i in range(clients - n_edge)
    ]
    samples = []
    interval = min(60.0, max(5.0, minutes * 60 / 8))  # a minute, or eight windows of a short run
    last_tokens, t_last = 0, time.monotonic()
    while time.monotonic() < stop_at:
        await asyncio.sleep(min(interval, max(0.0, stop_at - time.monotonic())))
        now = time.monotonic()
        sample = {
            "t_s": round(now - (stop_at - minutes * 60)),
            "tokens_per_s": (tally.tokens - last_tokens) / (now - t_last),
            "server_rss_mb": rss_bytes(pid) / 2**20,
            "errors": len(tally.errors),
            "mismatches": tally.mismatches,
        }
        samples.append(sample)
        print(json.dumps(sample), flush=True)
        last_tokens, t_last = tally.tokens, now
    await asyncio.gather(*tasks)
    return tally, samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--target", help="target name or path (default: a tiny seeded model)")
    parser.add_argument("--draft", help="draft name or path (default: a tiny seeded model)")
    args = parser.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="eespec-soak-")
    if args.target is None:
        target_path, draft_path = save_tiny_pair(workdir)
        exits = "1,3"
    else:
        target_path, draft_path, exits = args.target, args.draft or "smollm2-135m-draft", "24"
    target_model, target_tok = load_model(target_path)
    eos = target_model.generation_config.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos
    oracle = {
        p: oracle_greedy(target_model, target_tok(p).input_ids, args.max_tokens, eos=eos) for p in PROMPTS
    }
    del target_model
    server = ServerProcess(target_path, api_key=KEY, exits=exits, core=0).start()
    try:
        rss0 = rss_bytes(server.process.pid)
        tally, samples = asyncio.run(
            soak(
                server.url,
                server.process.pid,
                draft_path,
                oracle,
                args.clients,
                args.minutes,
                args.max_tokens,
            )
        )
    finally:
        server.stop()
    rates = [s["tokens_per_s"] for s in samples]
    summary = {
        "minutes": args.minutes,
        "clients": args.clients,
        "requests": tally.requests,
        "tokens": tally.tokens,
        "tokens_per_s_median": statistics.median(rates),
        "tokens_per_s_min_over_median": min(rates) / statistics.median(rates)
        if statistics.median(rates)
        else 0,
        "server_rss_mb_at_start": rss0 / 2**20,
        "server_rss_mb_first_window": samples[0]["server_rss_mb"],
        "server_rss_mb_last_window": samples[-1]["server_rss_mb"],
        "errors": len(tally.errors),
        "greedy_mismatches": tally.mismatches,
    }
    summary["steady"] = summary["tokens_per_s_min_over_median"] >= 0.7
    summary["memory_flat"] = samples[-1]["server_rss_mb"] <= samples[0]["server_rss_mb"] * 1.10
    print(json.dumps({"summary": summary, "first_errors": tally.errors[:5]}, indent=2))
    ok = summary["steady"] and summary["memory_flat"] and not tally.errors and not tally.mismatches
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
