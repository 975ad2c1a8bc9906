"""Single-frame latency of perception models on one core, interleaved round-robin (a loaded machine slows
every model alike), with medians and minimums side by side and each model's ratio to the first.

    python -m eespec.bench.scripts.perception_latency A.safetensors B.safetensors ... [--repeats 200]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", nargs="+", type=Path)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    from robot.perception.store import load_model

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    models = {p.stem: load_model(p) for p in args.weights}
    frame = torch.rand(1, 3, 60, 80)
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for model in models.values():
            for _ in range(5):
                model(frame)
        for _ in range(args.repeats):
            for name, model in models.items():
                t0 = time.perf_counter()
                model(frame)
                times[name].append((time.perf_counter() - t0) * 1e3)
    base = statistics.median(next(iter(times.values())))
    print("| model | widths | T | median ms | min ms | median vs first |")
    print("|---|---|---|---|---|---|")
    for name, t in times.items():
        cfg = models[name].config
        med, steps = statistics.median(t), cfg.timesteps if cfg.kind == "snn" else 1
        print(f"| {name} | {cfg.widths} | {steps} | {med:.3f} | {min(t):.3f} | {base / med:.2f}× faster |")


if __name__ == "__main__":
    main()
