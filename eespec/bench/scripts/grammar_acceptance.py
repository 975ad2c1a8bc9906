"""Structured output: acceptance and tokens/s with and without the grammar on the draft side.

    python -m eespec.bench.scripts.grammar_acceptance --max-tokens 64 --window 4 \\
        --json benchmarks/results/grammar_acceptance.json

In-process (draft and target in this process, one torch thread), greedy, the default pair. For each
grammar (a JSON schema, a regex, a Lark grammar) and prompt, side by side in one run:
* `target + grammar`: transformers' generate() with the grammar as an llguidance logits processor (the
  oracle, and the no-speculation baseline under the grammar);
* `sd, grammar on target only`: the target masks its rows, the draft proposes unconstrained tokens;
* `sd, grammar on both`: the draft masks its own logits with the same grammar;
* `sd, no grammar`: plain speculative decoding on the same prompts (for reference).
Every speculative output under a grammar is compared with the oracle's token for token.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import time
from pathlib import Path

import llguidance
import llguidance.hf
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from cloud_server.engine import EarlyExitTarget, TargetSession, eos_ids_of
from edge_client.decoder import SpeculativeDecoder
from edge_client.draft import DraftEngine
from eespec.bench.records import machine_line
from eespec.local import encode_prompt
from shared.defaults import DEFAULT_DRAFT, DEFAULT_TARGET
from shared.grammar import GrammarSpec
from shared.models import load_model

ROBOT_SCHEMA = {
    "type": "object",
    "properties": {
        "action": {"enum": ["move", "turn", "pick", "place", "stop"]},
        "distance_m": {"type": "number", "minimum": 0, "maximum": 10},
        "object": {"type": "string", "maxLength": 24},
    },
    "required": ["action", "distance_m", "object"],
    "additionalProperties": False,
}
GRAMMARS = {
    "json_schema": {"json_schema": ROBOT_SCHEMA},
    "regex": {
        "regex": r"(move|turn|pick|place|stop)\((\d{1,2}(\.\d)?)?\)(; (move|turn|pick|place|stop)\(\d?\))*"
    },
    "lark": {
        "lark": 'start: step ("; " step){0,4}\n'
        'step: VERB " " NUMBER " " UNIT\n'
        'VERB: "forward" | "back" | "left" | "right"\n'
        "NUMBER: /[1-9][0-9]?/\n"
        'UNIT: "cm" | "m" | "deg"\n'
    },
}
PROMPTS = [
    "Answer in JSON. The robot should drive 2 metres to the red box.",
    "Answer in JSON. Pick up the blue cup on the table.",
    "Answer in JSON. Turn around and stop.",
    "Write the plan to go to the kitchen door and open it.",
    "Give the commands to put the apple in the basket.",
    "How would the robot move around the chair?",
]


class OracleGrammar(LogitsProcessor):
    """generate()'s grammar: llguidance's mask applied per step (as tests/helpers.py's oracle does)."""

    def __init__(self, ll_tokenizer, grammar: dict, prompt_len: int) -> None:
        spec = GrammarSpec.model_validate(grammar)
        self.matcher = llguidance.LLMatcher(ll_tokenizer, spec.to_llguidance(), log_level=0)
        self.prompt_len = prompt_len
        self.consumed = 0

    def __call__(self, input_ids, scores):
        generated = input_ids[0, self.prompt_len :].tolist()
        for token in generated[self.consumed :]:
            self.matcher.consume_token(token)
        self.consumed = len(generated)
        bias = torch.frombuffer(bytearray(self.matcher.compute_logit_bias()), dtype=torch.uint8)
        allowed = torch.zeros(scores.shape[-1], dtype=torch.bool)
        n = min(len(bias), scores.shape[-1])
        allowed[:n] = bias[:n] > 0
        return scores.masked_fill(~allowed, float("-inf"))


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def measure(args) -> dict:
    torch.set_num_threads(args.threads)
    target_model, tokenizer = load_model(args.target)
    draft_model, _ = load_model(args.draft)
    eos = eos_ids_of(target_model, tokenizer)
    ll_tokenizer = llguidance.hf.from_tokenizer(
        tokenizer, n_vocab=target_model.config.vocab_size, eos_token=eos
    )
    session = TargetSession(EarlyExitTarget(target_model, None), eos_ids=eos, tokenizer=tokenizer)
    constrained = SpeculativeDecoder(
        DraftEngine(draft_model, tokenizer=tokenizer), session, window=args.window
    )
    unconstrained = SpeculativeDecoder(DraftEngine(draft_model), session, window=args.window)
    rows: dict[str, dict[str, dict[str, list]]] = {}
    for kind in args.grammars.split(","):
        grammar = GRAMMARS[kind]
        modes: dict[str, dict[str, list]] = {
            m: {"tok_s": [], "acceptance": [], "accepted_per_round": [], "exact": [], "tokens": []}
            for m in (
                "target + grammar",
                "sd, grammar on target only",
                "sd, grammar on both",
                "sd, no grammar",
            )
        }
        # Warm-up (untimed): the draft's and the target's grammar compilers, llguidance's lexer caches.
        warm = encode_prompt(tokenizer, PROMPTS[0], chat=True)
        for decoder in (constrained, unconstrained):
            decoder.generate(warm, max_tokens=4, grammar=grammar)
        for prompt in PROMPTS[: args.prompts]:
            ids = encode_prompt(tokenizer, prompt, chat=True)
            processor = OracleGrammar(ll_tokenizer, grammar, len(ids))  # compiled before the clock starts
            t0 = time.perf_counter()
            x = torch.tensor([ids])
            out = target_model.generate(
                x,
                attention_mask=torch.ones_like(x),
                do_sample=False,
                max_new_tokens=args.max_tokens,
                eos_token_id=eos,
                pad_token_id=eos[0],
                logits_processor=LogitsProcessorList([processor]),
            )
            oracle_s = time.perf_counter() - t0
            expected = out[0, len(ids) :].tolist()
            row = modes["target + grammar"]
            row["tok_s"].append(len(expected) / oracle_s)
            row["tokens"].append(len(expected))
            row["exact"].append(None)  # it is the oracle
            for name, decoder, g in (
                ("sd, grammar on target only", unconstrained, grammar),
                ("sd, grammar on both", constrained, grammar),
                ("sd, no grammar", constrained, None),
            ):
                result = decoder.generate(ids, max_tokens=args.max_tokens, grammar=g)
                m = result.metrics
                row = modes[name]
                row["tok_s"].append(m.generated_tokens / m.total_s)
                row["acceptance"].append(m.accepted / m.drafted if m.drafted else 0.0)
                row["accepted_per_round"].append(m.accepted / m.rounds if m.rounds else 0.0)
                row["tokens"].append(m.generated_tokens)
                row["exact"].append(result.token_ids == expected if g is not None else None)
            print(f"{kind}: {tokenizer.decode(expected, skip_special_tokens=True)!r}", flush=True)
        rows[kind] = modes
    summary = {
        kind: {
            mode: {
                "tokens_per_s_median": _median(r["tok_s"]),
                "acceptance_median": _median(r["acceptance"]),
                "accepted_per_round_median": _median(r["accepted_per_round"]),
                "generated_tokens": sum(r["tokens"]),
                "all_equal_oracle": all(r["exact"]) if r["exact"][0] is not None else None,
            }
            for mode, r in modes.items()
        }
        for kind, modes in rows.items()
    }
    return {
        "date": datetime.date.today().isoformat(),
        "machine": machine_line(args.threads),
        "load_avg_at_start": args.load_at_start,
        "load_avg_at_end": list(os.getloadavg()),
        "command": "python -m eespec.bench.scripts.grammar_acceptance "
        + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in vars(args).items()
            if k not in ("json", "load_at_start")
        ),
        "summary": summary,
        "per_prompt": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", default=DEFAULT_TARGET)
    parser.add_argument("--draft", default=DEFAULT_DRAFT)
    parser.add_argument("--grammars", default="json_schema,regex,lark")
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    args.load_at_start = list(os.getloadavg())
    report = measure(args)
    print(
        f"\n{report['date']} · {report['machine']} · load {args.load_at_start} → {report['load_avg_at_end']}"
    )
    print(f"Command: `{report['command']}`\n")
    print("| grammar | mode | tokens/s (median) | acceptance (median) | accepted / round | output = oracle |")
    print("| --- | --- | ---: | ---: | ---: | :---: |")
    for kind, modes in report["summary"].items():
        for mode, s in modes.items():
            acc = "—" if mode == "target + grammar" else f"{s['acceptance_median']:.1%}"
            apr = "—" if mode == "target + grammar" else f"{s['accepted_per_round_median']:.2f}"
            exact = {True: "yes", False: "NO", None: "(oracle)" if mode == "target + grammar" else "n/a"}[
                s["all_equal_oracle"]
            ]
            print(f"| {kind} | {mode} | {s['tokens_per_s_median']:.1f} | {acc} | {apr} | {exact} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
