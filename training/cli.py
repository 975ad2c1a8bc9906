"""`eespec train-exits` as a plain function of argv (argparse), for wiring into the typer app or `-m`."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence


def parse_layers(text: str) -> tuple[int, ...]:
    try:
        layers = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"--layers wants comma-separated layer numbers, got {text!r}"
        ) from exc
    if not layers:
        raise argparse.ArgumentTypeError("--layers is empty")
    return layers


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="eespec train-exits",
        description="Self-distil exit heads (adapters after decoder layers) of a frozen target.",
    )
    p.add_argument("--target", default="smollm2-135m-instruct", help="known model name or model folder")
    p.add_argument("--layers", type=parse_layers, default=(10, 15, 20, 24), help="1-based, e.g. 10,15,20,24")
    p.add_argument("--out", required=True, help="output folder (heads, metrics.json, checkpoint.pt)")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--kind", choices=("linear", "lowrank"), default="linear")
    p.add_argument("--rank", type=int, default=64, help="rank of a lowrank adapter")
    p.add_argument("--loss", choices=("kl", "topk_kl"), default="topk_kl")
    p.add_argument("--topk", type=int, default=32, help="teacher top-k per position in the shortlist")
    p.add_argument("--negatives", type=int, default=1024, help="random vocabulary ids added to the shortlist")
    p.add_argument("--ce-weight", type=float, default=0.5, help="hard-label CE weight (topk_kl)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-blocks", type=int, default=64, help="held-out blocks evaluated")
    p.add_argument("--checkpoint-every", type=int, default=25)
    p.add_argument("--time-budget", type=float, default=None, help="wall seconds, summed over resumes")
    p.add_argument("--stop-at", type=int, default=None, help="stop (checkpointed) after this step")
    p.add_argument("--heldout-fraction", type=float, default=0.03)
    return p


def main_train_exits(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from training.exits import train_exits

    command = "eespec train-exits " + shlex.join(list(sys.argv[1:] if argv is None else argv))
    metrics = train_exits(
        args.target,
        args.layers,
        args.out,
        steps=args.steps,
        batch=args.batch,
        seq_len=args.seq_len,
        lr=args.lr,
        kind=args.kind,
        rank=args.rank,
        loss=args.loss,
        topk=args.topk,
        negatives=args.negatives,
        ce_weight=args.ce_weight,
        seed=args.seed,
        schedule=args.schedule,
        warmup=args.warmup,
        weight_decay=args.weight_decay,
        clip=args.clip,
        resume=args.resume,
        progress=args.progress,
        threads=args.threads,
        eval_every=args.eval_every,
        eval_blocks=args.eval_blocks,
        checkpoint_every=args.checkpoint_every,
        time_budget_s=args.time_budget,
        stop_at=args.stop_at,
        heldout_fraction=args.heldout_fraction,
        command=command,
    )
    summary = {k: metrics[k] for k in ("steps", "tokens_seen", "wall_seconds", "agreement_top1")}
    print(json.dumps(summary, indent=2))
    return 0


def build_draft_parser() -> argparse.ArgumentParser:
    from training.draft import DraftSettings

    d = DraftSettings(target="")
    p = argparse.ArgumentParser(
        prog="eespec train-draft",
        description="Distil a small draft (same tokenizer) from a target, on text the target generates "
        "and on standard-library code.",
    )
    p.add_argument("--target", default="smollm2-135m-instruct", help="known model name or model folder")
    p.add_argument("--out", required=True, help="output folder (model/, training.json, checkpoint.pt)")
    for name in ("hidden", "layers", "heads", "kv_heads", "intermediate", "steps", "batch", "seq_len"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    p.add_argument("--gen-fraction", type=float, default=d.gen_fraction, help="share of generated rows")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--ce-weight", type=float, default=d.ce_weight, help="hard-label (teacher argmax) weight")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--prompts", type=int, default=d.prompts, help="generation prompts for the target")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--checkpoint-every", type=int, default=25)
    p.add_argument("--time-budget", type=float, default=None, help="wall seconds, summed over resumes")
    p.add_argument("--stop-at", type=int, default=None, help="stop (checkpointed) after this step")
    return p


def main_train_draft(argv: Sequence[str] | None = None) -> int:
    args = build_draft_parser().parse_args(argv)
    from training.draft import DraftSettings, train_draft

    command = "eespec train-draft " + shlex.join(list(sys.argv[1:] if argv is None else argv))
    fields = {f: getattr(args, f) for f in DraftSettings.__dataclass_fields__ if hasattr(args, f)}
    metrics = train_draft(
        DraftSettings(**fields),
        args.out,
        resume=args.resume,
        progress=args.progress,
        threads=args.threads,
        checkpoint_every=args.checkpoint_every,
        eval_every=args.eval_every,
        time_budget_s=args.time_budget,
        stop_at=args.stop_at,
        command=command,
    )
    keys = ("steps", "finished", "wall_seconds_training", "agreement_top1_heldout")
    summary = {k: metrics.get(k) for k in keys}
    print(json.dumps(summary, indent=2))
    return 0 if metrics.get("finished") else 3


if __name__ == "__main__":
    raise SystemExit(main_train_exits())
