"""Self-distillation of exit heads: the frozen base model's final distribution teaches an adapter per exit.

One forward of the frozen model yields the teacher (final logits) and, through forward hooks on the
decoder layers (the same "after layer L" read-out `EarlyExitTarget` uses), every exit's hidden states. Only
the adapters train; the norm and LM head are the model's own, frozen.

Losses:
  * ``kl``: KL(final ‖ exit) over the full vocabulary. The LM head's backward over 49,152 tokens costs
    about as much per exit as the whole base forward.
  * ``topk_kl``: the same KL over a shortlist (the union of the teacher's top-k ids in the batch plus
    random negatives, so that tokens outside every teacher top-k are still pushed down), plus a hard-label
    cross-entropy to the teacher's argmax over that shortlist.

Determinism: batch `i` and its random negatives come from a generator seeded by (seed, i), so a run
stopped and resumed from `checkpoint.pt` reaches the same weights as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cloud_server.engine import AdapterKind, ExitConfig, ExitHeads, decoder_layers, model_fingerprint
from training.corpus import Corpus, build_corpus

LossKind = Literal["kl", "topk_kl"]
Schedule = Literal["cosine", "constant"]
CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.json"
EVAL_CHUNK = 1024  # positions per full-vocabulary exit read-out during evaluation

# Settings a resumed run must share with its checkpoint (others, like the time budget, may change).
_RESUME_KEYS = (
    "target",
    "layers",
    "steps",
    "batch",
    "seq_len",
    "lr",
    "kind",
    "rank",
    "loss",
    "topk",
    "negatives",
    "ce_weight",
    "seed",
    "schedule",
    "warmup",
    "weight_decay",
    "clip",
)


@dataclass(frozen=True)
class TrainSettings:
    target: str
    layers: tuple[int, ...]
    steps: int
    batch: int
    seq_len: int
    lr: float
    kind: AdapterKind
    rank: int
    loss: LossKind
    topk: int
    negatives: int
    ce_weight: float
    seed: int
    schedule: Schedule
    warmup: int
    weight_decay: float
    clip: float


@dataclass
class EvalSet:
    """Held-out features computed once: each exit's hidden states and the final layer's top-1 and its prob."""

    hidden: dict[int, torch.Tensor]
    teacher_top1: torch.Tensor
    teacher_pmax: torch.Tensor

    @property
    def positions(self) -> int:
        return int(self.teacher_top1.numel())


@contextmanager
def captured_hidden(model: nn.Module, layers: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Forward hooks storing the output of decoder layer L (1-based) under key L."""
    stack = decoder_layers(model)  # type: ignore[arg-type]
    store: dict[int, torch.Tensor] = {}

    def hook_for(layer: int) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            store[layer] = output[0] if isinstance(output, tuple) else output  # type: ignore[assignment]

        return hook

    handles = [stack[layer - 1].register_forward_hook(hook_for(layer)) for layer in layers]
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


def teacher_forward(
    model: nn.Module, ids: torch.Tensor, layers: Sequence[int]
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Final logits [B*T, V] and each exit's hidden states [B*T, H], without autograd history."""
    with torch.no_grad(), captured_hidden(model, layers) as store:
        logits = model(input_ids=ids, use_cache=False).logits
    hidden = {layer: store[layer].reshape(-1, store[layer].shape[-1]) for layer in layers}
    return logits.reshape(-1, logits.shape[-1]).float(), hidden


def _head_params(lm_head: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    weight = lm_head.weight
    bias = getattr(lm_head, "bias", None)
    return weight, bias if isinstance(bias, torch.Tensor) else None


def full_kl_loss(x: torch.Tensor, lm_head: nn.Module, teacher_logp: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(teacher ‖ exit) over the whole vocabulary; `x` is the normed exit state."""
    student_logp = F.log_softmax(lm_head(x).float(), dim=-1)
    return F.kl_div(student_logp, teacher_logp, log_target=True, reduction="batchmean")


def shortlist_ids(
    teacher_logits: torch.Tensor, topk: int, negatives: int, generator: torch.Generator
) -> torch.Tensor:
    """Sorted union of every position's teacher top-k and `negatives` uniformly drawn vocabulary ids."""
    vocab = teacher_logits.shape[-1]
    top = teacher_logits.topk(min(topk, vocab), dim=-1).indices.reshape(-1)
    extra = torch.randint(vocab, (negatives,), generator=generator) if negatives > 0 else top[:0]
    return torch.unique(torch.cat([top, extra.to(top.device)]))


def shortlist_loss(
    x: torch.Tensor,
    lm_head: nn.Module,
    teacher_logits: torch.Tensor,
    ids: torch.Tensor,
    ce_weight: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, kl, ce) over the shortlist `ids`: KL(teacher|S ‖ exit|S) + ce_weight · CE(exit|S, argmax)."""
    weight, bias = _head_params(lm_head)
    student = F.linear(x, weight[ids], None if bias is None else bias[ids]).float()
    student_logp = F.log_softmax(student, dim=-1)
    teacher_s = teacher_logits[:, ids]
    kl = F.kl_div(student_logp, F.log_softmax(teacher_s, dim=-1), log_target=True, reduction="batchmean")
    ce = F.nll_loss(student_logp, teacher_s.argmax(dim=-1))  # the argmax is in every top-k, so in S
    return kl + ce_weight * ce, kl, ce


def lr_lambda(step: int, *, steps: int, warmup: int, schedule: Schedule, floor: float = 0.1) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def step_generator(seed: int, step: int) -> torch.Generator:
    digest = hashlib.sha256(f"eespec-exits:{seed}:{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") & (2**63 - 1))


def build_eval_set(
    model: nn.Module, blocks: np.ndarray, layers: Sequence[int], *, batch: int, limit: int, seed: int
) -> EvalSet:
    """Held-out features from `limit` blocks chosen by a seeded permutation (same blocks for every run)."""
    order = np.random.default_rng(seed).permutation(len(blocks))[:limit]
    chosen = blocks[np.sort(order)].astype(np.int64)
    hidden: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    top1: list[torch.Tensor] = []
    pmax: list[torch.Tensor] = []
    for start in range(0, len(chosen), batch):
        ids = torch.from_numpy(chosen[start : start + batch]).to(next(model.parameters()).device)
        logits, hs = teacher_forward(model, ids, layers)
        probs_max, arg = F.softmax(logits, dim=-1).max(dim=-1)
        top1.append(arg)
        pmax.append(probs_max)
        for layer in layers:
            hidden[layer].append(hs[layer].clone())
    return EvalSet({layer: torch.cat(v) for layer, v in hidden.items()}, torch.cat(top1), torch.cat(pmax))


def evaluate(
    heads: ExitHeads, norm: nn.Module, lm_head: nn.Module, data: EvalSet
) -> dict[str, dict[str, float]]:
    """Per exit layer: top-1 agreement with the final layer, the final top-1 within the exit's top 5, and
    top-1 agreement where the final layer is confident (p_max ≥ 0.5, where drafts tend to be accepted)."""
    out: dict[str, dict[str, float]] = {"top1": {}, "top5": {}, "top1_confident": {}}
    confident = data.teacher_pmax >= 0.5
    with torch.no_grad():
        for layer in heads.layers:
            adapter = heads.adapter(layer)
            hits1 = hits5 = hits_conf = 0
            for start in range(0, data.positions, EVAL_CHUNK):
                h = data.hidden[layer][start : start + EVAL_CHUNK]
                logits = lm_head(norm(adapter(h.to(next(adapter.parameters()).dtype))))
                ref = data.teacher_top1[start : start + EVAL_CHUNK]
                top5 = logits.topk(5, dim=-1).indices
                match = top5[:, 0] == ref
                hits1 += int(match.sum())
                hits5 += int((top5 == ref[:, None]).any(dim=-1).sum())
                hits_conf += int((match & confident[start : start + EVAL_CHUNK]).sum())
            key = str(layer)
            out["top1"][key] = hits1 / data.positions
            out["top5"][key] = hits5 / data.positions
            out["top1_confident"][key] = hits_conf / max(1, int(confident.sum()))
    out["confident_fraction"] = {"all": float(confident.float().mean())}
    return out


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _fmt(values: dict[str, float]) -> str:
    return " ".join(f"L{k}={v * 100:.1f}%" for k, v in values.items())


def train_exits(
    target: str,
    layers: Sequence[int],
    out_dir: str | Path,
    *,
    steps: int = 500,
    batch: int = 8,
    seq_len: int = 128,
    lr: float = 1e-3,
    kind: AdapterKind = "linear",
    rank: int = 64,
    loss: LossKind = "topk_kl",
    topk: int = 32,
    negatives: int = 1024,
    ce_weight: float = 0.5,
    seed: int = 0,
    schedule: Schedule = "cosine",
    warmup: int = 20,
    weight_decay: float = 0.0,
    clip: float = 1.0,
    resume: bool = True,
    progress: bool = True,
    threads: int | None = 1,
    eval_every: int = 100,
    eval_blocks: int = 64,
    checkpoint_every: int = 25,
    time_budget_s: float | None = None,
    stop_at: int | None = None,
    heldout_fraction: float = 0.03,
    command: str | None = None,
    model_and_tokenizer: tuple[Any, Any] | None = None,
    corpus: Corpus | None = None,
) -> dict[str, Any]:
    """Train exit adapters after decoder `layers` (1-based) of the frozen `target`; returns the metrics.

    Writes `out_dir/checkpoint.pt` every `checkpoint_every` steps (and when stopping), and on completion
    (all `steps`, or `time_budget_s` of cumulative wall time spent) `exits.safetensors` + `exits.json`
    (loadable with `ExitHeads.load`) and `metrics.json`. With `resume`, a checkpoint with the same settings
    is continued. `stop_at` stops (checkpointed, no final heads) after that step, as an interruption would.
    `model_and_tokenizer` / `corpus` replace loading `target` / building the offline corpus (tests).
    """
    started = time.perf_counter()
    if threads is not None:
        torch.set_num_threads(threads)
        if threads == 1:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    settings = TrainSettings(
        target=target,
        layers=tuple(sorted({int(x) for x in layers})),
        steps=steps,
        batch=batch,
        seq_len=seq_len,
        lr=lr,
        kind=kind,
        rank=rank,
        loss=loss,
        topk=topk,
        negatives=negatives,
        ce_weight=ce_weight,
        seed=seed,
        schedule=schedule,
        warmup=warmup,
        weight_decay=weight_decay,
        clip=clip,
    )
    if loss not in ("kl", "topk_kl"):
        raise ValueError(f"unknown loss {loss!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = _Log(progress)

    if model_and_tokenizer is None:
        from shared.models import load_model

        model, tokenizer = load_model(target)
    else:
        model, tokenizer = model_and_tokenizer
    model.eval().requires_grad_(False)
    stack = decoder_layers(model)
    bad = [layer for layer in settings.layers if not 1 <= layer < len(stack)]
    if bad:
        raise ValueError(f"exit layers {bad} outside 1..{len(stack) - 1} for a {len(stack)}-layer model")
    norm: nn.Module = model.model.norm
    lm_head: nn.Module = model.get_output_embeddings()
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device

    if corpus is None:
        corpus = build_corpus(
            tokenizer, seq_len=seq_len, seed=seed, heldout_fraction=heldout_fraction, progress=progress
        )
    if corpus.seq_len != seq_len:
        raise ValueError(f"corpus blocks are {corpus.seq_len} tokens, seq_len is {seq_len}")
    if len(corpus.train) == 0 or len(corpus.heldout) == 0:
        raise ValueError("the corpus needs blocks in both the train and the held-out split")

    torch.manual_seed(seed)
    heads = ExitHeads(
        ExitConfig(
            layers=settings.layers,
            hidden_size=int(model.config.hidden_size),
            kind=kind,
            rank=rank,
            base_model=target,
            model=model_fingerprint(model, tokenizer),
        )
    ).to(device=device, dtype=dtype)
    optimizer = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, steps=steps, warmup=warmup, schedule=schedule)
    )

    step = 0
    tokens_seen = 0
    prior_wall = prior_train = 0.0
    history: list[dict[str, Any]] = []
    ckpt_path = out / CHECKPOINT_NAME
    if resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        saved = ckpt["settings"]
        diff = {
            k: (saved.get(k), getattr(settings, k))
            for k in _RESUME_KEYS
            if saved.get(k) != _jsonable(getattr(settings, k))
        }
        if diff:
            raise ValueError(f"{ckpt_path} was made with other settings {diff}; pass resume=False to restart")
        heads.load_state_dict(ckpt["heads"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["rng"])
        step, tokens_seen = int(ckpt["step"]), int(ckpt["tokens_seen"])
        prior_wall, prior_train = float(ckpt["wall_seconds"]), float(ckpt["train_seconds"])
        history = list(ckpt["history"])
        log.write(f"resumed {ckpt_path} at step {step}/{steps}")

    eval_set = build_eval_set(
        model, corpus.heldout, settings.layers, batch=batch, limit=eval_blocks, seed=seed
    )
    log.write(
        f"corpus: {len(corpus.train)} train / {len(corpus.heldout)} held-out blocks of {seq_len}; "
        f"evaluating on {eval_set.positions} held-out positions"
    )

    def run_eval() -> None:
        heads.eval()
        result = evaluate(heads, norm, lm_head, eval_set)
        history.append({"step": step, "tokens_seen": tokens_seen, "wall_seconds": wall()} | result)
        log.write(f"eval step {step}: top-1 agreement {_fmt(result['top1'])}")

    def wall() -> float:
        return prior_wall + time.perf_counter() - started

    def save_checkpoint() -> None:
        _atomic_save(
            {
                "settings": {k: _jsonable(v) for k, v in dataclasses.asdict(settings).items()},
                "heads": heads.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state(),
                "step": step,
                "tokens_seen": tokens_seen,
                "wall_seconds": wall(),
                "train_seconds": prior_train + train_time,
                "history": history,
            },
            ckpt_path,
        )

    if not history:
        run_eval()  # step 0: the zero-initialised adapters, i.e. the base model's own read-out

    train_time = 0.0
    bar = log.bar(total=steps, initial=step)
    last_loss: dict[str, float] = {}
    stopped_by_budget = False
    while step < steps:
        if stop_at is not None and step >= stop_at:
            break
        if time_budget_s is not None and wall() >= time_budget_s:
            stopped_by_budget = True
            log.write(f"time budget of {time_budget_s:.0f} s spent at step {step}")
            break
        t0 = time.perf_counter()
        heads.train()
        gen = step_generator(seed, step)
        index = torch.randint(len(corpus.train), (batch,), generator=gen).numpy()
        ids = torch.from_numpy(corpus.train[index].astype(np.int64)).to(device)
        teacher_logits, hidden = teacher_forward(model, ids, settings.layers)
        if loss == "kl":
            teacher_logp = F.log_softmax(teacher_logits, dim=-1)
            shortlist = None
        else:
            shortlist = shortlist_ids(teacher_logits, topk, negatives, gen).to(device)
        totals: list[float] = []
        for layer in settings.layers:
            x = norm(heads.adapter(layer)(hidden[layer]))
            if shortlist is None:
                layer_loss = full_kl_loss(x, lm_head, teacher_logp)
            else:
                layer_loss, _, _ = shortlist_loss(x, lm_head, teacher_logits, shortlist, ce_weight)
            # Backward per exit: only one exit's [positions, vocabulary] activations are alive at a time.
            (layer_loss / len(settings.layers)).backward()
            totals.append(float(layer_loss.detach()))
        grad_norm = float(torch.nn.utils.clip_grad_norm_(heads.parameters(), clip))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += ids.numel()
        dt = time.perf_counter() - t0
        train_time += dt
        last_loss = {str(layer): value for layer, value in zip(settings.layers, totals, strict=True)}
        mean_loss = sum(totals) / len(totals)
        history.append({"step": step, "loss": mean_loss, "per_layer": last_loss, "grad_norm": grad_norm})
        bar.update(
            1,
            loss=f"{mean_loss:.3f}",
            tok_s=f"{ids.numel() / dt:.0f}",
            s_step=f"{dt:.2f}",
            shortlist=0 if shortlist is None else int(shortlist.numel()),
        )
        if eval_every > 0 and step % eval_every == 0 and step < steps:
            run_eval()
        if checkpoint_every > 0 and step % checkpoint_every == 0:
            save_checkpoint()
    bar.close()

    finished = step >= steps or stopped_by_budget
    if finished and not (history and history[-1].get("step") == step and "top1" in history[-1]):
        run_eval()
    save_checkpoint()
    evals = [h for h in history if "top1" in h]
    metrics: dict[str, Any] = {
        "target": target,
        "layers": list(settings.layers),
        "complete": step >= steps,
        "stopped_by_time_budget": stopped_by_budget,
        "steps": step,
        "steps_planned": steps,
        "tokens_seen": tokens_seen,
        "wall_seconds": round(wall(), 1),
        "train_seconds": round(prior_train + train_time, 1),
        "seconds_per_step": round((prior_train + train_time) / max(1, step), 3),
        "agreement_top1": evals[-1]["top1"],
        "agreement_top5": evals[-1]["top5"],
        "agreement_top1_confident": evals[-1]["top1_confident"],
        "baseline_zero_adapter": {k: evals[0][k] for k in ("top1", "top5", "top1_confident")},
        "eval_positions": eval_set.positions,
        "eval_blocks": eval_blocks,
        "confident_fraction": evals[-1]["confident_fraction"]["all"],
        "settings": {k: _jsonable(v) for k, v in dataclasses.asdict(settings).items()},
        "threads": torch.get_num_threads(),
        "command": command if command is not None else " ".join(sys.argv),
        "corpus": {k: v for k, v in corpus.info.items() if k != "heldout_files"}
        | {"heldout_files_count": len(corpus.info.get("heldout_files", []))},
        "final_train_loss_per_layer": last_loss,
        "evals": [{k: v for k, v in h.items()} for h in evals],
        "loss_curve": [{"step": h["step"], "loss": round(h["loss"], 4)} for h in history if "loss" in h],
    }
    if finished:
        final = ExitHeads(heads.config)
        final.load_state_dict({k: v.detach().float().cpu() for k, v in heads.state_dict().items()})
        final.save(out)
        (out / METRICS_NAME).write_text(json.dumps(metrics, indent=2) + "\n")
        log.write(f"saved heads to {out}: top-1 agreement {_fmt(metrics['agreement_top1'])}")
    return metrics


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


class _Bar:
    def __init__(self, enabled: bool, total: int, initial: int, desc: str = "train-exits") -> None:
        self._bar: Any = None
        if enabled:
            from tqdm import tqdm

            tty = sys.stderr.isatty()
            self._bar = tqdm(
                total=total,
                initial=initial,
                desc=desc,
                unit="step",
                file=sys.stderr,
                mininterval=0.5 if tty else 30.0,
                dynamic_ncols=tty,
            )

    def update(self, n: int, **postfix: object) -> None:
        if self._bar is not None:
            self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class _Log:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def write(self, message: str) -> None:
        if self.enabled:
            from tqdm import tqdm

            tqdm.write(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr)

    def bar(self, total: int, initial: int, desc: str = "train-exits") -> _Bar:
        return _Bar(self.enabled, total, initial, desc)
