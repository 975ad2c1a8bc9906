"""How many draft tokens each proposer gets accepted per round, on the target's own greedy outputs.

    python -m eespec.bench.scripts.proposer_quality --dtype bfloat16 --window 4 --prompts 6 --max-tokens 48 \\
        --references ref.json --json benchmarks/results/proposer_quality.json

Greedy verification accepts a draft token exactly when it equals the target's next token, so with the
target's greedy output in hand a round can be replayed without the target: accepted = the length of the
common prefix of the window and the reference continuation, then the round commits accepted + 1 reference
tokens. This measures the proposers (the draft model, prompt lookup, their combination) on identical rounds
in one process; the target runs once per prompt (its `generate()`, cached in --references). Also printed:
the draft model's and the n-gram lookup's time per proposed token against the target's time per token.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import torch

from cloud_server.engine import eos_ids_of
from edge_client.draft import DraftEngine
from edge_client.proposers import CombinedProposer, NgramProposer
from eespec.bench.records import machine_line
from shared.defaults import DEFAULT_DRAFT, DEFAULT_TARGET
from shared.models import load_model
from shared.precision import load_in_precision
from shared.sampling import SamplingParams
from shared.workloads import load_workload

GREEDY = SamplingParams()


def replay(proposer, prompt_ids: list[int], reference: list[int], window: int) -> dict[str, float]:
    """Rounds of greedy speculation replayed against the target's reference output."""
    committed = [*prompt_ids, reference[0]]
    done = 1
    rounds = accepted_total = drafted = 0
    empty = 0
    propose_s = 0.0
    while done < len(reference):
        t0 = time.perf_counter()
        drafted_window = proposer.draft(committed, window, GREEDY)
        propose_s += time.perf_counter() - t0
        tokens = list(drafted_window.tokens) if drafted_window is not None else []
        if not tokens:
            empty += 1
        truth = reference[done:]
        accepted = 0
        while accepted < len(tokens) and accepted < len(truth) and tokens[accepted] == truth[accepted]:
            accepted += 1
        step = min(accepted + 1, len(truth))
        committed.extend(truth[:step])
        done += step
        rounds += 1
        accepted_total += min(accepted, step)
        drafted += len(tokens)
    return {
        "rounds": rounds,
        "accepted": accepted_total,
        "drafted": drafted,
        "empty": empty,
        "propose_s": propose_s,
    }


def measure(args) -> dict:
    torch.set_num_threads(args.threads)
    target, tokenizer = load_in_precision(args.target, args.dtype)
    draft_model, _ = load_model(args.draft)
    eos = eos_ids_of(target, tokenizer)
    references: dict[str, list[int]] = {}
    ref_path = Path(args.references) if args.references else None
    if ref_path is not None and ref_path.is_file():
        references = json.loads(ref_path.read_text())
    target_s, target_tokens = 0.0, 0
    proposers = {
        "draft model": DraftEngine(draft_model),
        "n-gram": NgramProposer(max_ngram=args.max_ngram, min_ngram=args.min_ngram),
    }
    proposers["combined"] = CombinedProposer(
        proposers["draft model"], NgramProposer(max_ngram=args.max_ngram, min_ngram=args.min_ngram)
    )
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name in args.workloads.split(","):
        workload = load_workload(name)
        for prompt in workload.prompts[: args.prompts]:
            ids = workload.encode(tokenizer, prompt)
            key = f"{args.target}|{args.dtype}|{args.max_tokens}|{json.dumps(ids)}"
            if key not in references:
                x = torch.tensor([ids])
                t0 = time.perf_counter()
                with torch.inference_mode():
                    out = target.generate(
                        x,
                        attention_mask=torch.ones_like(x),
                        do_sample=False,
                        max_new_tokens=args.max_tokens,
                        eos_token_id=eos or None,
                        pad_token_id=eos[0] if eos else 0,
                    )
                target_s += time.perf_counter() - t0
                references[key] = out[0, len(ids) :].tolist()
                target_tokens += len(references[key])
            for pname, proposer in proposers.items():
                r = replay(proposer, ids, references[key], args.window)
                agg = results.setdefault(pname, {}).setdefault(name, {})
                for field, value in r.items():
                    agg[field] = agg.get(field, 0) + value
    if ref_path is not None:
        ref_path.write_text(json.dumps(references))
    table = {
        pname: {
            w: {
                "accepted_per_round": v["accepted"] / v["rounds"],
                "tokens_per_round": (v["accepted"] + v["rounds"]) / v["rounds"],
                "acceptance_rate": v["accepted"] / v["drafted"] if v["drafted"] else None,
                "empty_rounds": v["empty"] / v["rounds"],
                "propose_ms_per_token": 1000.0 * v["propose_s"] / v["drafted"] if v["drafted"] else None,
            }
            for w, v in by_w.items()
        }
        for pname, by_w in results.items()
    }
    return {
        "command": "python -m eespec.bench.scripts.proposer_quality "
        + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in vars(args).items()
            if v is not None and k not in ("json", "references")
        ),
        "date": datetime.date.today().isoformat(),
        "machine": machine_line(args.threads),
        "target_ms_per_token": 1000.0 * target_s / target_tokens if target_tokens else None,
        "window": args.window,
        "proposers": table,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", default=DEFAULT_TARGET)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--draft", default=DEFAULT_DRAFT)
    parser.add_argument("--workloads", default="code,prose,robot")
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--max-ngram", type=int, default=4)
    parser.add_argument("--min-ngram", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--references", default=None, help="JSON cache of the target's outputs")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    report = measure(args)
    if report["target_ms_per_token"]:
        print(f"target generate(): {report['target_ms_per_token']:.1f} ms per token")
    workloads = args.workloads.split(",")
    print(f"window {args.window}: accepted draft tokens per round (tokens per round), empty rounds, ms/token")
    print("| proposer | " + " | ".join(workloads) + " |")
    print("| --- |" + " ---: |" * len(workloads))
    for pname, by_w in report["proposers"].items():
        cells = []
        for w in workloads:
            v = by_w[w]
            ms = v["propose_ms_per_token"]
            cells.append(
                f"{v['accepted_per_round']:.2f} ({v['tokens_per_round']:.2f}), "
                f"{v['empty_rounds']:.0%} empty, {ms:.2f} ms"
                if ms is not None
                else "–"
            )
        print(f"| {pname} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
