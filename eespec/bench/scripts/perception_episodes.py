"""Robot tasks in the simulator with each perception, side by side: success, time to goal, perception latency
and the compute each episode's perception spent (frames perceived × the model card's energy per frame).

Runs `eespec robot run --backend sim --sim-robot procedural --planner scene-follow --perception P` (real
processes, the real daemon) for every task × perception × seed, and prints a markdown table.

    python -m eespec.bench.scripts.perception_episodes --tasks blue-ball-ahead,red-box-behind \
        --perceptions oracle,snn,snn+adaptive --seeds 0,1,2 --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path


def run_episode(task: str, perception: str, seed: int, log: Path, timeout_s: float) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "eespec",
        "robot",
        "run",
        "--backend",
        "sim",
        "--sim-robot",
        "procedural",
        "--task",
        task,
        "--planner",
        "scene-follow",
        "--perception",
        perception,
        "--seed",
        str(seed),
        "--log",
        str(log),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=os.environ.copy())
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{' '.join(cmd)} printed no summary: {out.stderr[-500:]}")
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="blue-ball-ahead,red-box-behind")
    parser.add_argument("--perceptions", default="oracle,snn,snn+adaptive")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=Path("perception-episodes"))
    parser.add_argument("--timeout", type=float, default=150.0)
    args = parser.parse_args()
    from robot.perception.store import shipped_dir

    card = json.loads((shipped_dir() / "card.json").read_text())
    rows = []
    for task in args.tasks.split(","):
        for perception in args.perceptions.split(","):
            runs = []
            for seed in (int(s) for s in args.seeds.split(",")):
                log = args.out / f"{task}-{perception.replace('+', '_')}-{seed}"
                summary = run_episode(task, perception, seed, log, args.timeout)
                runs.append(summary)
                print(json.dumps(summary), file=sys.stderr)
            rows.append((task, perception, runs))
    print(
        "| task | perception | success | time to goal (s), median of successes | perception ms (median) |"
        " frames perceived / offered | perception energy per episode (µJ) |"
    )
    print("|---|---|---|---|---|---|---|")
    for task, perception, runs in rows:
        ok = [r for r in runs if r["success"]]
        ttg = statistics.median(r["time_to_goal_s"] for r in ok) if ok else float("nan")
        p = [r["perception"] for r in runs]
        model = perception.partition("+")[0]
        if model in card:
            lat = statistics.median(x["latency_ms_median"] for x in p if "latency_ms_median" in x)
            perceived = sum(x.get("frames_perceived", x.get("frames", 0)) for x in p)
            offered = sum(x.get("frames_offered", x.get("frames", 0)) for x in p)
            energy = perceived * card[model]["energy_uj"] / len(runs)
            cells = f"{lat:.2f} | {perceived} / {offered} | {energy:.0f}"
        else:
            cells = "— | — | —"
        print(f"| {task} | {perception} | {len(ok)}/{len(runs)} | {ttg:.1f} | {cells} |")


if __name__ == "__main__":
    main()
