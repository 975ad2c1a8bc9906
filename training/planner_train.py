"""Fine-tune a planner model: LoRA on a base model, on the teacher's plans (training/planner_data.py).

Only the plan's tokens (and the end-of-turn token) are scored, and the LM head reads only their positions;
LoRA sits on the top `--lora-layers` decoder layers, so the backward pass stops there. Training runs for a
wall-clock budget (CPU time is what this costs), then the held-out split is decoded greedily and compared
with the teacher's plans. Writes the adapter (float16 safetensors), its config and `training.json`.

    python -m training.planner_train --data planner-data.jsonl --base smollm2-135m-instruct \\
        --out shared/models/adapters/smollm2-135m-planner --minutes 12 --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import torch

from robot.actions import Move, Turn, parse_plan
from shared.models import load_model

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def encode_example(tokenizer: Any, prompt: str, plan: str) -> tuple[list[int], int]:
    """(prompt + plan + end-of-turn ids, where the plan starts): the prompt as the planner sends it."""
    from shared.prompts import encode_prompt

    prefix = encode_prompt(tokenizer, prompt, chat=True)
    completion = tokenizer(plan, add_special_tokens=False).input_ids + [int(tokenizer.eos_token_id)]
    return prefix + completion, len(prefix)


def plan_loss(model: Any, ids: list[int], start: int) -> torch.Tensor:
    inner = model.get_base_model()
    hidden = inner.model(input_ids=torch.tensor([ids])).last_hidden_state[0]
    logits = inner.lm_head(hidden[start - 1 : len(ids) - 1])
    return torch.nn.functional.cross_entropy(logits.float(), torch.tensor(ids[start:]))


def compare(pred_text: str, want_text: str) -> dict[str, bool]:
    """Whether the model's plan parses, has the teacher's action sequence, and its numbers are close."""
    want = parse_plan(want_text)
    try:
        pred = parse_plan(pred_text)
    except ValueError:
        return {"valid": False, "same_actions": False, "close": False, "exact": False}
    same = [a.action for a in pred] == [a.action for a in want]
    close = same and all(
        (not isinstance(w, Turn) or abs(p.deg - w.deg) <= 10)
        and (not isinstance(w, Move) or abs(p.duration_s - w.duration_s) <= 0.5)
        for p, w in zip(pred, want, strict=True)
    )
    return {"valid": True, "same_actions": same, "close": close, "exact": pred_text.strip() == want_text}


def evaluate(
    model: Any, tokenizer: Any, rows: list[dict[str, Any]], max_new_tokens: int = 128
) -> dict[str, Any]:
    from shared.prompts import encode_prompt

    counts = {"valid": 0, "same_actions": 0, "close": 0, "exact": 0}
    model.eval()
    with torch.no_grad():
        for r in rows:
            ids = torch.tensor([encode_prompt(tokenizer, r["prompt"], chat=True)])
            out = model.generate(
                ids, max_new_tokens=max_new_tokens, do_sample=False, attention_mask=torch.ones_like(ids)
            )
            text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
            for k, v in compare(text, r["plan"]).items():
                counts[k] += int(v)
    n = max(1, len(rows))
    return {"examples": len(rows)} | {k: round(v / n, 3) for k, v in counts.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--base", default="smollm2-135m-instruct")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--minutes", type=float, default=12.0, help="Training wall-clock budget.")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--lora-layers", type=int, default=10, help="LoRA on the top N decoder layers (0: all).")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval", type=int, default=40, help="Held-out plans decoded after training.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save_file

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rows = [json.loads(line) for line in args.data.read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    heldout = [r for r in rows if r["split"] == "heldout"]
    random.Random(args.seed).shuffle(train)
    random.Random(args.seed + 1).shuffle(heldout)
    base, tokenizer = load_model(args.base, dtype=torch.float32)
    n_layers = base.config.num_hidden_layers
    first = 0 if args.lora_layers <= 0 else max(0, n_layers - args.lora_layers)
    config = LoraConfig(
        r=args.rank,
        lora_alpha=2 * args.rank,
        lora_dropout=0.0,
        target_modules=TARGET_MODULES,
        layers_to_transform=list(range(first, n_layers)),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, config)
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    budget_s = args.minutes * 60
    warmup = 10
    t0 = time.monotonic()
    losses: list[float] = []
    step = 0
    model.train()
    while step < len(train) and time.monotonic() - t0 < budget_s:
        frac = (time.monotonic() - t0) / budget_s
        lr = args.lr * min(1.0, (step + 1) / warmup) * max(0.05, 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        ids, start = encode_example(tokenizer, train[step]["prompt"], train[step]["plan"])
        loss = plan_loss(model, ids, start)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
        if step % 10 == 0:
            recent = sum(losses[-10:]) / 10
            print(f"step {step} loss {recent:.3f} lr {lr:.2e} {time.monotonic() - t0:.0f} s", flush=True)
    train_s = time.monotonic() - t0
    args.out.mkdir(parents=True, exist_ok=True)  # the adapter first: evaluating takes long on a busy CPU
    state = {
        k: v.detach().to(torch.float16).contiguous() for k, v in get_peft_model_state_dict(model).items()
    }
    save_file(state, args.out / "adapter_model.safetensors")
    model.peft_config["default"].save_pretrained(args.out)
    t1 = time.monotonic()
    report = evaluate(model, tokenizer, heldout[: args.eval])
    eval_s = time.monotonic() - t1
    print("held-out:", report, flush=True)
    (args.out / "training.json").write_text(
        json.dumps(
            {
                "base": args.base,
                "data": str(args.data),
                "train_examples_seen": step,
                "train_examples_available": len(train),
                "rank": args.rank,
                "lora_layers": list(range(first, n_layers)),
                "lr": args.lr,
                "threads": args.threads,
                "train_wall_s": round(train_s, 1),
                "eval_wall_s": round(eval_s, 1),
                "loss_first10": round(sum(losses[:10]) / max(1, len(losses[:10])), 3),
                "loss_last10": round(sum(losses[-10:]) / max(1, len(losses[-10:])), 3),
                "heldout": report,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"adapter written to {args.out}")


if __name__ == "__main__":
    main()
