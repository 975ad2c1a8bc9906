"""Early-verdict hit rate per exit on real speculative rounds, and when each exit's verdict is ready.

    python -m eespec.bench.scripts.exit_hit_rate --exits-dir cloud_server/exit_heads/smollm2-135m-instruct \\
        --workloads code,prose,robot --max-tokens 48 --window 4 --json benchmarks/results/exit_hit_rate.json

In-process (draft and target in this process, one thread), greedy. A round's early verdict at layer L is a
hit when its (accepted, token) equals the final verdict's. Also reported: the exit's t_ms against the
window's verify_ms (how much verification is left when the verdict is known) and the draft's time per
window (what pre-drafting can hide), so a deployment can pick the deepest exit that still leaves enough
verify time to cover drafting (DESIGN.md, "The early-exit target").
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
from collections import defaultdict
from pathlib import Path

import torch

from cloud_server.engine import EarlyExitTarget, ExitHeads, TargetSession, eos_ids_of
from edge_client.draft import DraftEngine
from edge_client.proposers import make_proposer, split_draft_name
from eespec.bench.records import machine_line
from shared.defaults import DEFAULT_DRAFT, DEFAULT_TARGET
from shared.models import load_model
from shared.precision import load_in_precision
from shared.workloads import load_workload
from training.card_check import speculative_rounds


def measure(args) -> dict:
    torch.set_num_threads(args.threads)
    target_model, tokenizer = load_in_precision(args.target, args.dtype)
    draft_name, ngram = split_draft_name(args.draft)
    draft_model, _ = load_model(draft_name)
    heads = ExitHeads.load(args.exits_dir, shortlist=not args.full_vocab) if args.exits_dir else None
    if heads is not None and args.layers_subset:
        heads = heads.subset([int(x) for x in args.layers_subset.split(",")])
    if heads is None:
        layers = tuple(int(x) for x in args.layers.split(","))
        heads = ExitHeads.untrained(layers, target_model.config.hidden_size)
    session = TargetSession(EarlyExitTarget(target_model, heads), eos_ids=eos_ids_of(target_model, tokenizer))
    engine = make_proposer(DraftEngine(draft_model), ngram=ngram)
    hits: dict[int, list[int]] = defaultdict(list)
    t_ms: dict[int, list[float]] = defaultdict(list)
    verify_ms: list[float] = []
    draft_ms: list[float] = []
    per_workload: dict[str, dict[int, list[int]]] = {}
    for name in args.workloads.split(","):
        workload = load_workload(name)
        per_workload[name] = defaultdict(list)
        for prompt in workload.prompts[: args.prompts]:
            ids = workload.encode(tokenizer, prompt)
            _, rounds = speculative_rounds(session, engine, ids, args.max_tokens, args.window)
            for r in rounds:
                draft_ms.append(r["draft_ms"])
                verify_ms.append(r["verify_ms"])
                for layer, early in r["early"].items():
                    hits[layer].append(int(early["hit"]))
                    per_workload[name][layer].append(int(early["hit"]))
                    t_ms[layer].append(early["t_ms"])
    return {
        "command": "python -m eespec.bench.scripts.exit_hit_rate "
        + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k != "json"
        ),
        "date": datetime.date.today().isoformat(),
        "machine": machine_line(args.threads),
        "rounds": len(verify_ms),
        "verify_ms_median": statistics.median(verify_ms),
        "draft_ms_per_window_median": statistics.median(draft_ms),
        "layers": {
            str(layer): {
                "hit_rate": sum(h) / len(h),
                "t_ms_median": statistics.median(t_ms[layer]),
                "left_ms_median": statistics.median(verify_ms) - statistics.median(t_ms[layer]),
                "by_workload": {
                    w: sum(v[layer]) / len(v[layer]) for w, v in per_workload.items() if v[layer]
                },
            }
            for layer, h in sorted(hits.items())
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", default=DEFAULT_TARGET)
    parser.add_argument("--draft", default=DEFAULT_DRAFT)
    parser.add_argument("--exits-dir", default=None)
    parser.add_argument(
        "--layers", default="10,15,20,24", help="untrained exits when --exits-dir is not given"
    )
    parser.add_argument("--layers-subset", default=None, help="only these trained exits, e.g. 24")
    parser.add_argument("--dtype", default="auto", help="the target's precision (shared.precision)")
    parser.add_argument(
        "--full-vocab",
        action="store_true",
        help="read the full vocabulary even if the heads ship a shortlist",
    )
    parser.add_argument("--workloads", default="code,prose,robot")
    parser.add_argument("--prompts", type=int, default=6, help="prompts per workload")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    report = measure(args)
    print(
        f"{report['rounds']} rounds; verify {report['verify_ms_median']:.1f} ms, "
        f"drafting {report['draft_ms_per_window_median']:.1f} ms per window (medians)"
    )
    print(
        "| exit after layer | early-verdict hit rate | "
        + " | ".join(args.workloads.split(","))
        + " | verdict ready at (ms) | verify time left (ms) |"
    )
    print("| ---: | ---: |" + " ---: |" * (len(args.workloads.split(",")) + 2))
    for layer, row in report["layers"].items():
        by = " | ".join(f"{row['by_workload'].get(w, float('nan')):.1%}" for w in args.workloads.split(","))
        timing = f"{row['t_ms_median']:.1f} | {row['left_ms_median']:.1f}"
        print(f"| {layer} | {row['hit_rate']:.1%} | {by} | {timing} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
