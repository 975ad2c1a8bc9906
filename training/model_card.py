"""Render an exit-heads MODEL_CARD.md from the run's metrics.json and the loss comparison's rows."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _pct(x: float) -> str:
    return f"{x * 100:.1f} %"


def _trend(metrics: dict[str, Any], layers: list[str]) -> str:
    evals = metrics["evals"]
    if len(evals) < 3:
        return "too few evaluations to tell whether agreement was still rising."
    a, b = evals[-2], evals[-1]
    gains = ", ".join(f"L{k} {(b['top1'][k] - a['top1'][k]) * 100:+.1f}" for k in layers)
    return (
        f"between the last two evaluations (steps {a['step']} → {b['step']}) agreement moved {gains} points."
    )


def _comparison_summary(rows: list[dict[str, Any]]) -> str:
    by = {(r["overrides"].get("loss"), r["overrides"].get("lr")): r for r in rows}
    short, full = by.get(("topk_kl", 1e-3)), by.get(("kl", 1e-3))
    fast = by.get(("topk_kl", 3e-3))
    parts = []
    if short and full:
        parts.append(
            f"At lr 1e-3 the shortlist loss ran {full['seconds_per_step'] / short['seconds_per_step']:.1f}× "
            f"as many steps per second as the full KL and ended higher per wall-clock second (mean "
            f"{_pct(short['mean_top1'])} after {short['steps']} steps vs {_pct(full['mean_top1'])} after "
            f"{full['steps']}); per step the full KL looked more sample-efficient, so the shortlist buys "
            "speed, not quality per step."
        )
    if fast and short:
        parts.append(
            f"lr 3e-3 reached a mean of {_pct(fast['mean_top1'])} in {fast['steps']} steps against "
            f"{_pct(short['mean_top1'])} in {short['steps']} for 1e-3; it also got more steps (less "
            "contention from the other engineer's tests while it ran), so the learning-rate effect is "
            "confounded, but it was used for the run."
        )
    parts.append(
        "These are two-minute runs scored on 2,048 positions (about ±1 point of sampling error) on a shared "
        "machine: indicative, not a tuned result."
    )
    return " ".join(parts)


def render(metrics: dict[str, Any], comparison: list[dict[str, Any]] | None, machine: str) -> str:
    s = metrics["settings"]
    c = metrics["corpus"]
    layers = [str(layer) for layer in metrics["layers"]]
    base = metrics["baseline_zero_adapter"]
    hidden = 576
    params = hidden * hidden + hidden if s["kind"] == "linear" else 2 * hidden * s["rank"]
    lines = [
        f"# Exit heads for {metrics['target']}",
        "",
        f'Adapters after decoder layers {", ".join(layers)} (1-based, "after layer L") of the frozen '
        f"{metrics['target']} (30 layers, hidden 576, vocabulary 49,152). Load with "
        '`ExitHeads.load("cloud_server/exit_heads/smollm2-135m-instruct")`. Files: `exits.json`, '
        "`exits.safetensors` (float32), `metrics.json` (every figure below, the loss curve and each "
        "evaluation).",
        "",
        "## Command",
        "",
        "```",
        metrics["command"],
        "```",
        "",
        "run as `python -m training.cli ...` with the same arguments (`eespec train-exits` once wired), "
        f"`OMP_NUM_THREADS=1`, on {machine}.",
        "",
        "## Data",
        "",
        f"* Source: the Python {c['python']} standard library sources of the running interpreter "
        f"(`{c['stdlib']}`, every `*.py` outside site-packages, sorted by path): "
        f"{c['sources']['stdlib']['files']:,} non-empty files, {c['sources']['stdlib']['bytes']:,} bytes, "
        f"{c['sources']['stdlib']['tokens']:,} tokens with the target's tokenizer.",
        "* English: no Debian English text was on the machine (no `bible-kjv-text`, no `python3.11-doc`), "
        "so the only English is the stdlib's own docstrings and comments and `pydoc_data/topics.py` (the "
        "language reference's text, 757 KB). No chat-formatted text.",
        f"* Blocks of {c['seq_len']} tokens cut from each split's files concatenated in path order with "
        f"`<|endoftext|>` (id {c['separator_id']}) between files.",
        f'* Split by file, seeded hash (`sha256("{c["seed"]}:" + path) < {c["heldout_fraction"]}`): '
        f"{c['files']['train']:,} train files → {c['blocks']['train']:,} blocks ({c['tokens']['train']:,} "
        f"tokens); {c['files']['heldout']:,} held-out files → {c['blocks']['heldout']:,} blocks "
        f"({c['tokens']['heldout']:,} tokens).",
        f"* Workload exclusion: the {c['workload_prompts']} strings of `shared/workloads/*.json` "
        "(every `prompts` entry and the robot `system` prompt) matched as regexes with any whitespace "
        "between words, on each file's text (dropping every block with a token inside a match) and again "
        f"on each block's decoded text. Found {c['prompt_occurrences']} occurrences; blocks dropped: "
        + ", ".join(f"{n} {k}" for k, n in c["blocks_dropped_for_prompts"].items())
        + ".",
        f"* Evaluation: {metrics['eval_blocks']} held-out blocks ({metrics['eval_positions']:,} positions) "
        "chosen by a seeded permutation, every position scored; the same blocks for the baseline and for "
        "every evaluation.",
        "",
        "## Adapter and loss",
        "",
        f"* Per exit: `h + W h + b` (`{s['kind']}`, {params:,} parameters, zero-initialised, so untrained it "
        "is exactly the base model's own intermediate read-out), then the model's own final norm and tied "
        "LM head (frozen). The base model is frozen in eval mode; hidden states are captured with forward "
        "hooks on the decoder layers (the read-out `EarlyExitTarget` uses) in the same forward that "
        "yields the teacher, the final logits.",
        f"* Loss `{s['loss']}`: "
        + (
            f"KL(final ‖ exit) restricted to a shortlist — the union of the teacher's top-{s['topk']} ids "
            f"over every position of the batch plus {s['negatives']} uniformly drawn vocabulary ids "
            "(negatives, so tokens outside every top-k are still pushed down) — with both distributions "
            f"renormalised over the shortlist, plus {s['ce_weight']} × cross-entropy to the teacher's "
            "argmax over the shortlist. Shortlists held ~4,500–5,000 ids."
            if s["loss"] == "topk_kl"
            else "KL(final ‖ exit) over the full vocabulary."
        ),
        f"* AdamW, lr {s['lr']}, weight decay {s['weight_decay']}, {s['warmup']} warm-up steps then "
        f"{s['schedule']} decay to 10 % over {s['steps']} planned steps, gradient clipping at {s['clip']}; "
        f"batch {s['batch']} × {s['seq_len']} tokens; seed {s['seed']}.",
        "",
        "## Run",
        "",
        f"* Steps: {metrics['steps']} of {metrics['steps_planned']} planned"
        + (" (stopped by the time budget)" if metrics["stopped_by_time_budget"] else "")
        + f"; tokens seen: {metrics['tokens_seen']:,} (~{metrics['tokens_seen'] / c['tokens']['train']:.2f} "
        "of an epoch).",
        f"* Wall time: {metrics['wall_seconds']:.0f} s in all ({metrics['train_seconds']:.0f} s in training "
        f"steps, {metrics['seconds_per_step']:.2f} s per step; the rest is loading, held-out evaluation "
        "and checkpoints).",
        f"* Machine: {machine}.",
        "",
        "## Held-out quality (top-1 agreement with the final layer)",
        "",
        "| exit layer | untrained (zero adapter) | trained | final top-1 in exit top-5 (untrained → "
        "trained) | top-1 where final p_max ≥ 0.5 (untrained → trained) |",
        "|---|---|---|---|---|",
    ]
    for layer in layers:
        lines.append(
            f"| {layer} | {_pct(base['top1'][layer])} | {_pct(metrics['agreement_top1'][layer])} | "
            f"{_pct(base['top5'][layer])} → {_pct(metrics['agreement_top5'][layer])} | "
            f"{_pct(base['top1_confident'][layer])} → {_pct(metrics['agreement_top1_confident'][layer])} |"
        )
    lines += [
        "",
        f"The final layer's p_max ≥ 0.5 at {_pct(metrics['confident_fraction'])} of the held-out positions. "
        "Agreement during training (held-out, same positions):",
        "",
        "| step | " + " | ".join(f"L{layer}" for layer in layers) + " |",
        "|---|" + "---|" * len(layers),
    ]
    for ev in metrics["evals"]:
        lines.append(f"| {ev['step']} | " + " | ".join(_pct(ev["top1"][layer]) for layer in layers) + " |")
    lines += [
        "",
        "**Early-verdict hit rate on real speculative rounds: to be measured** (by the deployment's "
        "benchmark, not here).",
        "",
    ]
    if comparison:
        lines += [
            "## What was tried: loss comparison",
            "",
            "Before the run, from scratch, each variant trained for the same ~110–120 s of wall time "
            "(constant LR after 5 warm-up steps, batch 8 × 128, same seed, so the same batches in the "
            "same order) and was evaluated on 16 held-out blocks (2,048 positions; the untrained baseline "
            "there: "
            + ", ".join(f"L{k} {_pct(v)}" for k, v in comparison[0]["baseline_top1"].items())
            + "). The machine was shared with another engineer's test runs, so seconds per step "
            "varied by ±30 % between runs of the same cost.",
            "",
            "| loss | lr | steps | s/step | " + " | ".join(f"L{layer}" for layer in layers) + " | mean |",
            "|---|---|---|---|" + "---|" * (len(layers) + 1),
        ]
        for row in comparison:
            o = row["overrides"]
            lines.append(
                f"| {o.get('loss')} | {o.get('lr')} | {row['steps']} | {row['seconds_per_step']:.2f} | "
                + " | ".join(_pct(row["top1"][layer]) for layer in layers)
                + f" | {_pct(row['mean_top1'])} |"
            )
        lines += [
            "",
            _comparison_summary(comparison),
            "",
        ]
    lines += [
        "## What falls short",
        "",
        "* Top-1 agreement with the final layer over all tokens is what is measured here; the hit rate "
        "needs agreement on accepted draft tokens and the next token at the first rejection, which this does "
        "not measure (the p_max ≥ 0.5 column is a rough proxy).",
        "* The training text is Python source only (code, docstrings, comments, the language reference's "
        "prose). The workloads include English prose and chat-formatted robot commands; the exits have not "
        "seen chat templates or narrative English, and may agree less there.",
        f"* Short: {metrics['tokens_seen']:,} tokens on one CPU thread; {_trend(metrics, layers)} A longer "
        "run, data generated by the target itself, or a larger adapter (e.g. a copied decoder block) may do "
        "better.",
        "* One seed; no learning-rate sweep beyond the two-minute comparison; the low-rank adapter and "
        "the draft-conditioned accept/reject head of DESIGN.md were not tried.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.model_card")
    p.add_argument("directory", help="folder with metrics.json; MODEL_CARD.md is written there")
    p.add_argument("--comparison", default=None, help="comparison.json from training.compare")
    p.add_argument("--machine", default="a shared 2-core AMD EPYC CPU VM (no GPU), 1 torch thread, float32")
    args = p.parse_args(argv)
    directory = Path(args.directory)
    metrics = json.loads((directory / "metrics.json").read_text())
    comparison = json.loads(Path(args.comparison).read_text()) if args.comparison else None
    (directory / "MODEL_CARD.md").write_text(render(metrics, comparison, args.machine))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
