"""A short, equal-wall-clock comparison of exit-training losses (the one recorded in the model card)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.exits import train_exits


def compare_losses(
    target: str,
    layers: Sequence[int],
    out_dir: str | Path,
    *,
    runs: Sequence[dict[str, Any]],
    budget_s: float,
    eval_blocks: int = 16,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Train each run (keyword overrides of `train_exits`) for `budget_s` wall seconds from scratch and
    report held-out top-1 agreement per layer, steps and seconds per step."""
    rows = []
    for i, overrides in enumerate(runs):
        kwargs: dict[str, Any] = {
            "steps": 10_000,  # the budget stops each run; a constant LR keeps the schedule out of it
            "schedule": "constant",
            "warmup": 5,
            "eval_every": 0,
            "checkpoint_every": 0,
            "eval_blocks": eval_blocks,
            "seed": seed,
            "resume": False,
            "time_budget_s": budget_s,
        } | dict(overrides)
        metrics = train_exits(target, layers, Path(out_dir) / f"run{i}", **kwargs)
        top1 = metrics["agreement_top1"]
        rows.append(
            {
                "overrides": dict(overrides),
                "steps": metrics["steps"],
                "seconds_per_step": metrics["seconds_per_step"],
                "wall_seconds": metrics["wall_seconds"],
                "top1": top1,
                "mean_top1": sum(top1.values()) / len(top1),
                "baseline_top1": metrics["baseline_zero_adapter"]["top1"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.compare")
    p.add_argument("--target", default="smollm2-135m-instruct")
    p.add_argument("--layers", default="10,15,20,24")
    p.add_argument("--out", required=True)
    p.add_argument("--budget", type=float, default=110.0)
    p.add_argument("--runs", default='[{"loss": "topk_kl"}, {"loss": "kl"}]', help="JSON list of overrides")
    args = p.parse_args(argv)
    rows = compare_losses(
        args.target,
        tuple(int(x) for x in args.layers.split(",")),
        args.out,
        runs=json.loads(args.runs),
        budget_s=args.budget,
    )
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "comparison.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
