"""The figures the model cards quote, recomputed on a small fixed check set so that a slow test can hold the
shipped weights to their cards (`tests/test_model_cards.py`).

Check set: the first `CHECK_BLOCKS` blocks of 128 tokens cut from the held-out standard-library files (the
training split's complement, same seeded hash as `training.corpus`), and the first `CHECK_PROMPTS` prompts
of each benchmark workload decoded greedily for `CHECK_TOKENS` tokens at window `CHECK_WINDOW`.

    python -m training.card_check --write      # refresh the card_check.json files beside the weights
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cloud_server.engine import EarlyExitTarget, ExitHeads, TargetSession, eos_ids_of
from edge_client.draft import DraftEngine
from shared.sampling import SamplingParams
from training.corpus import (
    assign_splits,
    contains_prompt,
    prompt_pattern,
    separator_id,
    stdlib_files,
    workload_prompts,
)

CHECK_BLOCKS = 16
CHECK_SEQ = 128
CHECK_PROMPTS = 2
CHECK_TOKENS = 32
CHECK_WINDOW = 4
CHECK_FILE = "card_check.json"
# How far a recomputation may drift (other CPUs round fp16/fp32 differently on near-ties).
TOLERANCE = {"agreement": 0.02, "mean_accepted_len": 0.25, "acceptance_rate": 0.06, "hit_rate": 0.08}


def check_blocks(tokenizer: Any, n: int = CHECK_BLOCKS, seq_len: int = CHECK_SEQ) -> np.ndarray:
    """[n, seq_len] token blocks from held-out stdlib files in path order, none overlapping a workload."""
    files = stdlib_files()
    splits = assign_splits(files, 0, 0.03)
    pattern = prompt_pattern(workload_prompts())
    sep = separator_id(tokenizer)
    stream: list[int] = []
    for f in files:
        if splits[f.name] != "heldout":
            continue
        stream += tokenizer(f.read(), add_special_tokens=False)["input_ids"] + [sep]
        if len(stream) > 4 * n * seq_len:
            break
    blocks = np.asarray(stream[: len(stream) // seq_len * seq_len], dtype=np.int64).reshape(-1, seq_len)
    keep = [b for b in blocks if not contains_prompt(tokenizer.decode(b.tolist()), pattern)]
    return np.stack(keep[:n])


@torch.no_grad()
def draft_agreement(target: Any, draft: Any, blocks: np.ndarray) -> float:
    """Top-1 agreement of the draft's next-token argmax with the target's, every position of `blocks`."""
    hits = total = 0
    for row in blocks:
        ids = torch.from_numpy(row)[None]
        t = target(input_ids=ids, use_cache=False).logits.argmax(-1)
        d = draft(input_ids=ids, use_cache=False).logits.argmax(-1)
        hits += int((t == d).sum())
        total += t.numel()
    return hits / total


@torch.no_grad()
def exit_agreement(target: Any, heads: ExitHeads, blocks: np.ndarray) -> dict[str, float]:
    """Per exit: top-1 agreement of the exit's read-out with the final layer on `blocks`."""
    from training.exits import build_eval_set, evaluate

    data = build_eval_set(target, blocks, heads.layers, batch=4, limit=len(blocks), seed=0)
    return evaluate(heads, target.model.norm, target.get_output_embeddings(), data)["top1"]


def speculative_rounds(
    session: TargetSession, engine: DraftEngine, prompt_ids: list[int], max_tokens: int, window: int
) -> tuple[list[int], list[dict[str, Any]]]:
    """Greedy speculative decoding in-process, round by round: (generated ids, one record per round with
    drafted, accepted, draft_ms, verify_ms and each exit's early (accepted, token) and t_ms)."""
    greedy = SamplingParams()
    started = session.start(prompt_ids, greedy, max_tokens)
    generated = [started.first_token]
    committed = [*prompt_ids, started.first_token]
    rounds = []
    round_no = 0
    while not session.finished:
        round_no += 1
        drafted = engine.draft(committed, window, greedy)
        earlies: list[Any] = []
        verdict = session.verify(drafted.to_message(round_no), earlies.append)
        new = list(drafted.tokens[: verdict.accepted])
        if verdict.token is not None:
            new.append(verdict.token)
        committed += new
        generated += new
        final = (verdict.accepted, verdict.token)
        rounds.append(
            {
                "drafted": len(drafted.tokens),
                "accepted": verdict.accepted,
                "draft_ms": drafted.draft_s * 1000,
                "verify_ms": verdict.verify_ms,
                "early": {e.layer: {"hit": (e.accepted, e.token) == final, "t_ms": e.t_ms} for e in earlies},
            }
        )
    return generated, rounds


def greedy_generate(model: Any, ids: list[int], max_tokens: int, eos: list[int], **kwargs: Any) -> list[int]:
    """transformers' own greedy `generate()` (the oracle), new tokens only; `kwargs` go to `generate`."""
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=eos[0],
            **kwargs,
        )
    return out[0, len(ids) :].tolist()


def round_figures(
    target: Any,
    tokenizer: Any,
    draft: Any,
    heads: ExitHeads | None,
    *,
    prompts: int = CHECK_PROMPTS,
    max_tokens: int = CHECK_TOKENS,
    window: int = CHECK_WINDOW,
) -> dict[str, Any]:
    """Acceptance and early-verdict hit rate per workload, and whether every output equals `generate()`."""
    from shared.workloads import load_workload

    eos = sorted(eos_ids_of(target, tokenizer))
    session = TargetSession(EarlyExitTarget(target, heads), eos_ids=eos)
    engine = DraftEngine(draft)
    out: dict[str, Any] = {"workloads": {}, "matches_target": True}
    hits_all: dict[str, list[bool]] = defaultdict(list)
    for name in ("code", "prose", "robot"):
        workload = load_workload(name)
        drafted = accepted = n_rounds = 0
        hits: dict[str, list[bool]] = defaultdict(list)
        for prompt in workload.prompts[:prompts]:
            ids = workload.encode(tokenizer, prompt)
            generated, rounds = speculative_rounds(session, engine, ids, max_tokens, window)
            reference = greedy_generate(target, ids, max_tokens, eos)
            out["matches_target"] &= generated == reference
            for r in rounds:
                drafted += r["drafted"]
                accepted += r["accepted"]
                n_rounds += 1
                for layer, e in r["early"].items():
                    hits[str(layer)].append(e["hit"])
                    hits_all[str(layer)].append(e["hit"])
        out["workloads"][name] = {
            "rounds": n_rounds,
            "acceptance_rate": accepted / drafted if drafted else 0.0,
            "mean_accepted_len": accepted / n_rounds if n_rounds else 0.0,
            "hit_rate": {k: sum(v) / len(v) for k, v in sorted(hits.items())},
        }
    out["hit_rate"] = {k: sum(v) / len(v) for k, v in sorted(hits_all.items())}
    return out


def compute(target_name: str, draft_name: str, exits_dir: str | Path | None) -> dict[str, Any]:
    """Every check figure for the pair (and exits, when given), on one torch thread."""
    from shared.models import load_model

    torch.set_num_threads(1)
    target, tokenizer = load_model(target_name)
    draft, _ = load_model(draft_name)
    # The card's figures are the adapters' over the full vocabulary; the shortlist read-out is measured by
    # eespec.bench.scripts.exit_hit_rate (benchmarks/RESULTS.md).
    heads = ExitHeads.load(exits_dir, shortlist=False) if exits_dir else None
    blocks = check_blocks(tokenizer)
    return {
        "target": target_name,
        "draft": draft_name,
        "check_set": {
            "blocks": int(blocks.shape[0]),
            "seq_len": int(blocks.shape[1]),
            "prompts_per_workload": CHECK_PROMPTS,
            "max_tokens": CHECK_TOKENS,
            "window": CHECK_WINDOW,
        },
        "draft_agreement_top1": draft_agreement(target, draft, blocks),
        "exit_agreement_top1": exit_agreement(target, heads, blocks) if heads is not None else None,
        "rounds": round_figures(target, tokenizer, draft, heads),
    }


def compare(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """Human-readable differences beyond `TOLERANCE` (empty when the weights still match their card)."""
    problems = []

    def near(what: str, a: float, b: float, tol: float) -> None:
        if abs(a - b) > tol:
            problems.append(f"{what}: card {a:.4f}, recomputed {b:.4f} (tolerance {tol})")

    tol = TOLERANCE["agreement"]
    near("draft top-1 agreement", expected["draft_agreement_top1"], actual["draft_agreement_top1"], tol)
    for layer, value in (expected.get("exit_agreement_top1") or {}).items():
        near(f"exit {layer} top-1 agreement", value, actual["exit_agreement_top1"][layer], tol)
    for name, row in expected["rounds"]["workloads"].items():
        got = actual["rounds"]["workloads"][name]
        for key in ("mean_accepted_len", "acceptance_rate"):
            near(f"{name} {key}", row[key], got[key], TOLERANCE[key])
    for layer, value in expected["rounds"]["hit_rate"].items():
        near(f"exit {layer} hit rate", value, actual["rounds"]["hit_rate"][layer], TOLERANCE["hit_rate"])
    if not actual["rounds"]["matches_target"]:
        problems.append("speculative output differs from the target's generate()")
    return problems


def check_section(figures: dict[str, Any]) -> str:
    """The "Check set" section both model cards carry, rendered from `card_check.json`."""
    c = figures["check_set"]
    rounds = figures["rounds"]
    lines = [
        "## Check set (recomputed by `tests/test_model_cards.py`)",
        "",
        f"{c['blocks']} held-out standard-library blocks of {c['seq_len']} tokens, and the first "
        f"{c['prompts_per_workload']} prompts of each workload decoded greedily for {c['max_tokens']} tokens "
        f"at window {c['window']} (target {figures['target']}, draft {figures['draft']}, one thread; "
        "`python -m training.card_check --write`). The slow test recomputes these and fails when the "
        "weights drift from them.",
        "",
        f"* Draft top-1 agreement with the target: {figures['draft_agreement_top1'] * 100:.1f} %",
    ]
    if figures.get("exit_agreement_top1"):
        lines.append(
            "* Exit top-1 agreement with the final layer: "
            + ", ".join(f"L{k} {v * 100:.1f} %" for k, v in figures["exit_agreement_top1"].items())
        )
    lines += [
        "",
        "| workload | rounds | acceptance rate | accepted drafts / round | early-verdict hit rate per exit |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for name, row in rounds["workloads"].items():
        hits = ", ".join(f"L{k} {v * 100:.0f} %" for k, v in row["hit_rate"].items()) or "-"
        lines.append(
            f"| {name} | {row['rounds']} | {row['acceptance_rate'] * 100:.1f} % | "
            f"{row['mean_accepted_len']:.2f} | {hits} |"
        )
    lines.append("")
    lines.append(
        f"Every output equal to the target's `generate()`: {'yes' if rounds['matches_target'] else 'NO'}."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from shared.defaults import DEFAULT_DRAFT, DEFAULT_TARGET
    from shared.models import resolve_model

    p = argparse.ArgumentParser(prog="python -m training.card_check", description=__doc__)
    p.add_argument("--target", default=DEFAULT_TARGET)
    p.add_argument("--draft", default=DEFAULT_DRAFT)
    p.add_argument("--exits-dir", default="cloud_server/exit_heads/smollm2-135m-instruct")
    p.add_argument("--write", action="store_true", help="write card_check.json beside the draft and exits")
    args = p.parse_args(argv)
    figures = compute(args.target, args.draft, args.exits_dir)
    text = json.dumps(figures, indent=2) + "\n"
    print(text)
    if args.write:
        for folder in (resolve_model(args.draft), Path(args.exits_dir)):
            (Path(folder) / CHECK_FILE).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
