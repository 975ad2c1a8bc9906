"""Draft quality and local speculative speed: acceptance per window and workload, and the same pair's
speed under our decoder against the target alone and transformers' assisted generation, in one run.

    python -m eespec.bench.scripts.draft_quality --json benchmarks/results/draft_quality.json

One process, one torch thread, greedy. For every workload prompt: the target's own `generate()` (the
reference and the "target alone" time), our in-process speculative decoder at each window (no exits, no
pre-drafting: in one process there is nothing to overlap), and `generate(assistant_model=draft)` with
transformers' default schedule and with a constant window equal to ours. Every output is compared with the
reference token for token. Speed ratios are tokens/s over the whole workload, measured side by side.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from cloud_server.engine import EarlyExitTarget, EngineLimits, TargetSession, eos_ids_of
from edge_client.decoder import SpeculativeDecoder
from edge_client.draft import DraftEngine
from eespec.bench.records import machine_line
from shared.defaults import DEFAULT_DRAFT, DEFAULT_TARGET
from shared.models import load_model
from shared.sampling import SamplingParams
from shared.workloads import load_workload
from training.card_check import greedy_generate


def per_token_ms(model: Any, steps: int = 40) -> float:
    """Median time of one cached decode step after a 32-token prefix."""
    from transformers import DynamicCache

    ids = torch.randint(0, model.config.vocab_size, (1, 32), generator=torch.Generator().manual_seed(0))
    times = []
    with torch.no_grad():
        cache = DynamicCache()
        out = model(input_ids=ids, past_key_values=cache, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        for _ in range(steps):
            t0 = time.perf_counter()
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            times.append(time.perf_counter() - t0)
            token = out.logits[:, -1:].argmax(-1)
    return statistics.median(times) * 1000


def _trim(tokens: list[int], eos: set[int]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1]
    return tokens


def measure(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    target, tokenizer = load_model(args.target)
    draft, _ = load_model(args.draft)
    eos = sorted(eos_ids_of(target, tokenizer))
    eos_set = set(eos)
    windows = [int(w) for w in args.windows.split(",")]
    session = TargetSession(
        EarlyExitTarget(target, None), eos_ids=eos, limits=EngineLimits(max_window=max(16, *windows))
    )
    engine = DraftEngine(draft)
    greedy = SamplingParams()
    speed_window = args.speed_window

    hf_constant = {
        "num_assistant_tokens": speed_window,
        "num_assistant_tokens_schedule": "constant",
        "assistant_confidence_threshold": 0.0,
    }
    methods = ["target"] + [f"ours_w{w}" for w in windows] + ["hf_assisted_default", "hf_assisted_constant"]
    seconds = {m: {} for m in methods}
    tokens = {m: {} for m in methods}
    matches = {m: {} for m in methods}
    acceptance: dict[str, dict[str, dict[str, float]]] = {}
    for name in args.workloads.split(","):
        workload = load_workload(name)
        acceptance[name] = {}
        for m in methods:
            seconds[m][name] = 0.0
            tokens[m][name] = 0
            matches[m][name] = True
        rounds = {w: [0, 0, 0] for w in windows}  # rounds, drafted, accepted
        for prompt in workload.prompts[: args.prompts]:
            ids = workload.encode(tokenizer, prompt)
            t0 = time.perf_counter()
            reference = _trim(greedy_generate(target, ids, args.max_tokens, eos), eos_set)
            seconds["target"][name] += time.perf_counter() - t0
            tokens["target"][name] += len(reference)
            for w in windows:
                decoder = SpeculativeDecoder(engine, session, window=w, preempt=False)
                t0 = time.perf_counter()
                result = decoder.generate(ids, max_tokens=args.max_tokens, sampling=greedy)
                seconds[f"ours_w{w}"][name] += time.perf_counter() - t0
                tokens[f"ours_w{w}"][name] += len(result.token_ids)
                matches[f"ours_w{w}"][name] &= list(result.token_ids) == reference
                rounds[w][0] += result.metrics.rounds
                rounds[w][1] += result.metrics.drafted
                rounds[w][2] += result.metrics.accepted
            for method, extra in (("hf_assisted_default", {}), ("hf_assisted_constant", hf_constant)):
                config = draft.generation_config
                saved = {k: getattr(config, k, None) for k in hf_constant}
                for k, v in extra.items():
                    setattr(config, k, v)
                try:
                    t0 = time.perf_counter()
                    out = greedy_generate(target, ids, args.max_tokens, eos, assistant_model=draft)
                    out = _trim(out, eos_set)
                    seconds[method][name] += time.perf_counter() - t0
                finally:
                    for k, v in saved.items():
                        setattr(config, k, v)
                tokens[method][name] += len(out)
                matches[method][name] &= out == reference
        for w in windows:
            n_rounds, drafted, accepted = rounds[w]
            acceptance[name][str(w)] = {
                "rounds": n_rounds,
                "acceptance_rate": accepted / drafted if drafted else 0.0,
                "mean_accepted_len": accepted / n_rounds if n_rounds else 0.0,
                "tokens_per_round": (accepted + n_rounds) / n_rounds if n_rounds else 0.0,
            }
    speed = {}
    for m in methods:
        total_s = sum(seconds[m].values())
        total_t = sum(tokens[m].values())
        speed[m] = {
            "tokens_per_s": total_t / total_s,
            "by_workload": {w: tokens[m][w] / seconds[m][w] for w in seconds[m]},
            "matches_target": all(matches[m].values()),
        }
    base = speed["target"]["tokens_per_s"]
    for m in methods:
        speed[m]["speedup_vs_target"] = speed[m]["tokens_per_s"] / base
    return {
        "command": "python -m eespec.bench.scripts.draft_quality "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "json"),
        "date": datetime.date.today().isoformat(),
        "machine": machine_line(args.threads),
        "target": args.target,
        "draft": args.draft,
        "draft_dtype": str(next(draft.parameters()).dtype).removeprefix("torch."),
        "per_token_ms": {"target": per_token_ms(target), "draft": per_token_ms(draft)},
        "acceptance": acceptance,
        "speed": speed,
        "prompts_per_workload": args.prompts,
        "speed_window": args.speed_window,
        "max_tokens": args.max_tokens,
    }


def print_report(report: dict[str, Any]) -> None:
    workloads = list(report["acceptance"])
    ms = report["per_token_ms"]
    print(
        f"{report['date']} · {report['machine']} · draft {report['draft']} ({report['draft_dtype']})\n"
        f"per-token decode: target {ms['target']:.1f} ms, draft {ms['draft']:.1f} ms "
        f"(ratio 1/{ms['target'] / ms['draft']:.1f})\n"
    )
    print("| workload | window | acceptance rate | accepted drafts / round | tokens / round |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for w in workloads:
        for k, row in report["acceptance"][w].items():
            print(
                f"| {w} | {k} | {row['acceptance_rate']:.1%} | {row['mean_accepted_len']:.2f} | "
                f"{row['tokens_per_round']:.2f} |"
            )
    print("\n| method | tokens/s | " + " | ".join(workloads) + " | × target | output = target |")
    print("| --- | ---: |" + " ---: |" * len(workloads) + " ---: | :---: |")
    for m, row in report["speed"].items():
        by = " | ".join(f"{row['by_workload'][w]:.1f}" for w in workloads)
        same = "yes" if row["matches_target"] else "NO"
        print(f"| {m} | {row['tokens_per_s']:.1f} | {by} | {row['speedup_vs_target']:.2f} | {same} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", default=DEFAULT_TARGET)
    parser.add_argument("--draft", default=DEFAULT_DRAFT)
    parser.add_argument("--workloads", default="code,prose,robot")
    parser.add_argument("--prompts", type=int, default=6, help="prompts per workload")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--windows", default="2,4,6")
    parser.add_argument("--speed-window", type=int, default=4, help="window of the constant HF schedule")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    report = measure(args)
    print_report(report)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
