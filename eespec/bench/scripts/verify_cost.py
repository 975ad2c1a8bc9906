"""What verifying a window costs against one autoregressive step of the same engine, per precision.

    python -m eespec.bench.scripts.verify_cost --dtypes float32,bfloat16,int8 --window 4 --repeats 20

One process, one thread; every precision's model loaded side by side and the measurements interleaved
(step, window, window + exit for each model in turn, repeated), so a load change hits all alike. A prefix of
`--context` cached tokens; a window forward is the pending token + k draft tokens (what `TargetSession.verify`
runs), rolled back after each measurement. "+ exit" adds the deployed exit's read-out mid-forward with the
greedy early verdict: the full LM head, and the shortlist head (`shortlist.json`) when the heads ship one.
Medians in ms, and each window's cost as a multiple of the same model's step.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from pathlib import Path

import torch

from cloud_server.engine import EarlyExitTarget, ExitHeads, shipped_exit_heads
from eespec.bench.records import machine_line
from shared.defaults import DEFAULT_EXIT_LAYERS, DEFAULT_TARGET
from shared.precision import load_in_precision
from shared.verification import greedy_verify


def measure(args) -> dict:
    torch.set_num_threads(args.threads)
    layers = tuple(int(x) for x in args.exits.split(",")) if args.exits else DEFAULT_EXIT_LAYERS
    exits_dir = args.exits_dir or shipped_exit_heads(args.target)
    # Wrappers over the same model coexist: an exit hook does nothing unless its own wrapper is forwarding.
    engines: dict[str, dict[str, EarlyExitTarget]] = {}
    caches = {}
    for dtype in args.dtypes.split(","):
        model, _ = load_in_precision(args.target, dtype)
        variants = {"full": EarlyExitTarget(model, ExitHeads.load(exits_dir, shortlist=False).subset(layers))}
        heads = ExitHeads.load(exits_dir).subset(layers)
        if heads.shortlist is not None:
            variants["shortlist"] = EarlyExitTarget(model, heads)
        engines[dtype] = variants
        caches[dtype] = variants["full"].new_kv_cache()
        caches[dtype].forward(list(range(200, 200 + args.context)))
    k = args.window
    window = list(range(1000, 1000 + k + 1))
    timings: dict[str, dict[str, list[float]]] = {d: {} for d in engines}

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1000.0

    for repeat in range(args.repeats + args.warmup):
        for dtype, variants in engines.items():
            cache = caches[dtype]
            n = len(cache.ids)
            runs: dict[str, float] = {}

            def step(cache=cache, n=n) -> None:
                greedy_verify(cache.forward(window[:1], keep=1), [])
                cache.truncate(n)

            def window_forward(exit_variant: str | None, cache=cache, n=n, variants=variants) -> None:
                target = variants[exit_variant or "full"]
                on_exit = (lambda _l, logits, _t: greedy_verify(logits, window[1:])) if exit_variant else None
                logits = target.forward(cache, window, keep=k + 1, on_exit=on_exit, extra_ids=window[1:])
                greedy_verify(logits, window[1:])
                cache.truncate(n)

            runs["step"] = timed(step)
            runs[f"window {k}"] = timed(lambda: window_forward(None))
            for variant in variants:
                runs[f"window {k} + exit ({variant})"] = timed(lambda v=variant: window_forward(v))
            if repeat >= args.warmup:
                for name, ms in runs.items():
                    timings[dtype].setdefault(name, []).append(ms)
    if args.profile:
        _profile(engines, caches, window, k)
    table = {
        dtype: {name: statistics.median(values) for name, values in rows.items()}
        for dtype, rows in timings.items()
    }
    return {
        "command": "python -m eespec.bench.scripts.verify_cost "
        + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k != "json"
        ),
        "date": datetime.datetime.now().isoformat(timespec="minutes"),
        "machine": machine_line(args.threads),
        "exit_layers": list(layers),
        "median_ms": table,
        "min_ms": {d: {n: min(v) for n, v in rows.items()} for d, rows in timings.items()},
    }


def _profile(engines, caches, window: list[int], k: int, rows: int = 12) -> None:
    """torch.profiler over 5 window forwards with the exit, per precision: where a round's time goes."""
    from torch.profiler import ProfilerActivity, profile

    for dtype, variants in engines.items():
        target, cache = variants.get("shortlist", variants["full"]), caches[dtype]
        n = len(cache.ids)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                target.forward(cache, window, keep=k + 1, on_exit=lambda *_: None, extra_ids=window[1:])
                cache.truncate(n)
        print(f"-- {dtype}: window {k} + exit, 5 forwards")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", default=DEFAULT_TARGET)
    parser.add_argument("--dtypes", default="float32,bfloat16,int8")
    parser.add_argument("--exits", default=None, help="exit layers (default: the deployed one)")
    parser.add_argument("--exits-dir", default=None)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="also print torch.profiler's top ops")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    report = measure(args)
    names = list(next(iter(report["median_ms"].values())))
    print(f"medians in ms (× the same precision's step), exit after layer {report['exit_layers']}")
    print("| precision | " + " | ".join(names) + " |")
    print("| --- |" + " ---: |" * len(names))
    for dtype, row in report["median_ms"].items():
        step = row["step"]
        cells = [f"{row[n]:.1f}" + ("" if n == "step" else f" ({row[n] / step:.2f}×)") for n in names]
        print(f"| {dtype} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
