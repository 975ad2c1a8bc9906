"""Distillation of a small draft from the target (same tokenizer): `eespec train-draft`.

Student: a LlamaForCausalLM with a narrow residual stream (default 256) and tied embeddings, so that the
49,152-token embedding, which dominates the size, fits the 40 MB fp16 budget. Its embedding starts as the
target's embedding projected on its top principal directions (the target ties embedding and LM head, so
this also starts the LM head near the target's); the decoder layers start random.

Teacher: the frozen target, run in bfloat16 (3x faster than float32 on CPUs with bf16 instructions; its
logits only teach), on two kinds of text per batch: what the target itself generated from code / prose /
robot prompts (`training.draft_data`), and standard-library code blocks (`training.corpus`).

Loss per position: KL(teacher ‖ student) over the teacher's top 32 tokens (full-vocabulary
normalisation on both sides) plus `ce_weight` times the cross-entropy to the teacher's argmax (greedy
speculation accepts exactly the argmax).

Runs are resumable: `checkpoint.pt` holds the student, the optimiser and the step; batch `i` is drawn from
a generator seeded by (seed, i), so a resumed run reaches the weights of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.corpus import Corpus, build_corpus
from training.draft_data import GeneratedSet, generate_set
from training.draft_prompts import build_prompts
from training.exits import _atomic_save, lr_lambda

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "training.json"
_RESUME_KEYS = (
    "target",
    "hidden",
    "layers",
    "heads",
    "kv_heads",
    "intermediate",
    "steps",
    "batch",
    "seq_len",
    "gen_fraction",
    "lr",
    "ce_weight",
    "seed",
    "warmup",
    "weight_decay",
    "prompts",
    "max_new_tokens",
)


@dataclass(frozen=True)
class DraftSettings:
    target: str
    hidden: int = 256
    layers: int = 6
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 768
    steps: int = 1000
    batch: int = 8
    seq_len: int = 256
    gen_fraction: float = 0.625
    lr: float = 2e-3
    ce_weight: float = 0.5
    seed: int = 0
    warmup: int = 50
    weight_decay: float = 0.01
    clip: float = 1.0
    prompts: int = 1536
    max_new_tokens: int = 96


def student_config(target_config: Any, s: DraftSettings) -> Any:
    from transformers import LlamaConfig

    rope = getattr(target_config, "rope_parameters", None) or {"rope_type": "default", "rope_theta": 10000.0}
    return LlamaConfig(
        vocab_size=target_config.vocab_size,
        hidden_size=s.hidden,
        intermediate_size=s.intermediate,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads,
        head_dim=64,
        hidden_act="silu",
        max_position_embeddings=target_config.max_position_embeddings,
        rms_norm_eps=target_config.rms_norm_eps,
        rope_parameters=dict(rope),
        tie_word_embeddings=True,
        bos_token_id=target_config.bos_token_id,
        eos_token_id=target_config.eos_token_id,
        pad_token_id=target_config.pad_token_id,
        initializer_range=0.02,
    )


def projected_embedding(embedding: torch.Tensor, width: int) -> torch.Tensor:
    """The target's [V, H] embedding on its top `width` right singular directions: [V, width]."""
    _, _, vh = torch.linalg.svd(embedding.float(), full_matrices=False)
    return embedding.float() @ vh[:width].T


def build_student(target: Any, s: DraftSettings) -> Any:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(s.seed)
    student = AutoModelForCausalLM.from_config(student_config(target.config, s)).float()
    with torch.no_grad():
        embedding = projected_embedding(target.get_input_embeddings().weight, s.hidden)
        student.get_input_embeddings().weight.copy_(embedding)
        # Tied head: scale the final norm so that the first logits have about unit spread, not the
        # dozens of nats that the raw embedding norms would give.
        student.model.norm.weight.fill_(1.0 / float(embedding.norm(dim=1).mean()))
    student.generation_config = target.generation_config
    return student


def _batch_generator(seed: int, step: int) -> np.random.Generator:
    digest = hashlib.sha256(f"eespec-draft:{seed}:{step}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def make_batch(
    step: int,
    s: DraftSettings,
    gen: GeneratedSet,
    gen_index: np.ndarray,
    blocks: np.ndarray,
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids [B, L] and a 0/1 mask: `gen_fraction` of the rows are generated sequences (right-padded or
    truncated to L), the rest are L consecutive corpus tokens."""
    rng = _batch_generator(s.seed, step)
    n_gen = round(s.batch * s.gen_fraction) if len(gen_index) else 0
    ids = np.full((s.batch, s.seq_len), pad_id, dtype=np.int64)
    mask = np.zeros((s.batch, s.seq_len), dtype=np.int64)
    for row in range(s.batch):
        if row < n_gen:
            seq = gen.sequences[int(gen_index[rng.integers(len(gen_index))])][: s.seq_len]
        else:
            per = blocks.shape[1]
            need = -(-s.seq_len // per)
            start = int(rng.integers(0, len(blocks) - need + 1))
            seq = blocks[start : start + need].reshape(-1)[: s.seq_len].astype(np.int64)
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def distill_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    ce_weight: float,
    topk: int = 32,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean over unmasked positions of KL(teacher ‖ student) restricted to the teacher's top-k tokens
    (both sides normalised over the full vocabulary, so the student's mass elsewhere is still pushed down)
    plus ce_weight * CE(student, teacher argmax). The top-k restriction drops a full-vocabulary softmax of
    the teacher and its KL terms, which cost more than the student's whole forward."""
    vocab = student_logits.shape[-1]
    weight = mask.reshape(-1).float()
    count = weight.sum().clamp(min=1.0)
    teacher = teacher_logits.reshape(-1, vocab)
    top_values, top_ids = torch.topk(teacher, topk, dim=-1)
    t_logp = top_values.float() - torch.logsumexp(teacher.float(), dim=-1, keepdim=True)
    student = student_logits.reshape(-1, vocab).float()
    s_logp = student.gather(1, top_ids) - torch.logsumexp(student, dim=-1, keepdim=True)
    kl = ((t_logp.exp() * (t_logp - s_logp)).sum(-1) * weight).sum() / count
    ce = (-s_logp[:, 0] * weight).sum() / count
    with torch.no_grad():
        agree = ((student.argmax(-1) == top_ids[:, 0]).float() * weight).sum() / count
    return kl + ce_weight * ce, {"kl": kl.item(), "ce": ce.item(), "agree": agree.item()}


@torch.no_grad()
def teacher_logits(teacher: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return teacher(input_ids=ids, attention_mask=mask, use_cache=False).logits


@torch.no_grad()
def evaluate_agreement(
    student: Any, teacher: Any, batches: list[tuple[torch.Tensor, torch.Tensor, str]]
) -> dict[str, float]:
    """Top-1 agreement of the student with the teacher's argmax, per source, on held-out batches."""
    student.eval()
    hits: dict[str, list[float]] = {}
    for ids, mask, source in batches:
        t = teacher_logits(teacher, ids, mask).argmax(-1)
        s = student(input_ids=ids, attention_mask=mask, use_cache=False).logits.argmax(-1)
        keep = mask.bool()
        hits.setdefault(source, []).append(float((s == t)[keep].float().sum()))
        hits.setdefault(source + "_n", []).append(float(keep.sum()))
    student.train()
    return {k: sum(hits[k]) / max(1.0, sum(hits[k + "_n"])) for k in hits if not k.endswith("_n")}


def _heldout_batches(
    s: DraftSettings, gen: GeneratedSet, gen_heldout: np.ndarray, blocks: np.ndarray, pad_id: int, n: int
) -> list[tuple[torch.Tensor, torch.Tensor, str]]:
    out = []
    for kind in ("code", "prose", "robot"):
        rows = [int(i) for i in gen_heldout if gen.kinds[int(i)] == kind][: n * s.batch]
        for start in range(0, len(rows), s.batch):
            chunk = [gen.sequences[i][: s.seq_len] for i in rows[start : start + s.batch]]
            ids = torch.full((len(chunk), s.seq_len), pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, seq in enumerate(chunk):
                ids[r, : len(seq)] = torch.from_numpy(seq)
                mask[r, : len(seq)] = 1
            out.append((ids, mask, f"generated_{kind}"))
    per = blocks.shape[1]
    rows_per = max(1, s.seq_len // per)
    for start in range(0, min(len(blocks), n * s.batch * rows_per), s.batch * rows_per):
        chunk = blocks[start : start + s.batch * rows_per]
        usable = (len(chunk) // rows_per) * rows_per
        if usable == 0:
            break
        ids = torch.from_numpy(chunk[:usable].reshape(-1, rows_per * per).astype(np.int64))
        out.append((ids, torch.ones_like(ids), "stdlib_code"))
    return out


def split_generated(gen: GeneratedSet, seed: int, heldout_fraction: float = 0.05) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed + 7)
    order = rng.permutation(len(gen))
    cut = max(1, int(len(gen) * heldout_fraction))
    return np.sort(order[cut:]), np.sort(order[:cut])


def train_draft(
    settings: DraftSettings,
    out_dir: str | Path,
    *,
    resume: bool = True,
    progress: bool = True,
    threads: int | None = None,
    checkpoint_every: int = 25,
    eval_every: int = 200,
    eval_batches: int = 4,
    time_budget_s: float | None = None,
    stop_at: int | None = None,
    command: str = "",
) -> dict[str, Any]:
    """Generate the target's text (cached), then distil; write `out_dir/model` (fp16 safetensors +
    tokenizer), `out_dir/training.json`, and `checkpoint.pt` along the way. Returns the metrics."""
    from shared.models import load_model
    from training.exits import _Log

    s = settings
    if threads:
        torch.set_num_threads(threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = _Log(progress)
    started = time.perf_counter()

    teacher, tokenizer = load_model(s.target, dtype=torch.bfloat16)
    teacher.requires_grad_(False)
    corpus = build_corpus(tokenizer, seq_len=128, seed=0, progress=progress)
    prompts = build_prompts(s.prompts, seed=s.seed)
    log.write(f"{len(prompts)} generation prompts; target continues each by up to {s.max_new_tokens} tokens")
    gen = generate_set(
        teacher, tokenizer, prompts, max_new_tokens=s.max_new_tokens, seed=s.seed, progress=progress
    )
    return distill(
        teacher,
        tokenizer,
        corpus,
        gen,
        s,
        out,
        resume=resume,
        progress=progress,
        checkpoint_every=checkpoint_every,
        eval_every=eval_every,
        eval_batches=eval_batches,
        time_budget_s=time_budget_s,
        stop_at=stop_at,
        command=command,
        started=started,
    )


def distill(
    teacher: Any,
    tokenizer: Any,
    corpus: Corpus,
    gen: GeneratedSet,
    s: DraftSettings,
    out: Path,
    *,
    resume: bool = True,
    progress: bool = True,
    checkpoint_every: int = 25,
    eval_every: int = 200,
    eval_batches: int = 4,
    time_budget_s: float | None = None,
    stop_at: int | None = None,
    command: str = "",
    started: float | None = None,
) -> dict[str, Any]:
    """The training loop proper, on a loaded teacher, corpus and generated set (see `train_draft`)."""
    from training.exits import _Log

    log = _Log(progress)
    started = time.perf_counter() if started is None else started
    out.mkdir(parents=True, exist_ok=True)
    pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    gen_train, gen_heldout = split_generated(gen, s.seed)
    log.write(
        f"generated set: {len(gen)} sequences, {gen.tokens} tokens "
        f"({len(gen_train)} train / {len(gen_heldout)} held out); corpus {corpus.train.shape[0]} blocks"
    )

    student = build_student(teacher, s)
    student.train()
    decay = [p for n, p in student.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in student.named_parameters() if p.ndim < 2]
    optim = torch.optim.AdamW(
        [{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=s.lr,
        betas=(0.9, 0.95),
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda i: lr_lambda(i, steps=s.steps, warmup=s.warmup, schedule="cosine")
    )
    step, wall_before, history = 0, 0.0, []
    ckpt_path = out / CHECKPOINT_NAME
    settings_dict = dataclasses.asdict(s)
    if resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        mismatched = [k for k in _RESUME_KEYS if ckpt["settings"].get(k) != settings_dict.get(k)]
        if mismatched:
            raise SystemExit(
                f"{ckpt_path} was written with different settings ({', '.join(mismatched)}); "
                "use another --out or --no-resume"
            )
        student.load_state_dict(ckpt["student"])
        optim.load_state_dict(ckpt["optim"])
        sched.load_state_dict(ckpt["sched"])
        step, wall_before, history = ckpt["step"], ckpt["wall_s"], ckpt["history"]
        log.write(f"resumed from {ckpt_path} at step {step}")

    heldout = _heldout_batches(s, gen, gen_heldout, corpus.heldout, pad_id, eval_batches)
    t0 = time.perf_counter()

    def wall() -> float:
        return wall_before + time.perf_counter() - t0

    def save_checkpoint() -> None:
        _atomic_save(
            {
                "settings": settings_dict,
                "student": student.state_dict(),
                "optim": optim.state_dict(),
                "sched": sched.state_dict(),
                "step": step,
                "wall_s": wall(),
                "history": history,
            },
            ckpt_path,
        )

    if step == 0:
        history.append(
            {"step": 0, "wall_s": 0.0, "agreement_top1": evaluate_agreement(student, teacher, heldout)}
        )
    bar = log.bar(s.steps, step, desc="train-draft")
    running: dict[str, float] = {}
    last = stop_at if stop_at is not None else s.steps
    while step < min(last, s.steps):
        if time_budget_s is not None and wall() >= time_budget_s:
            log.write(f"time budget reached at step {step}")
            break
        ids, mask = make_batch(step, s, gen, gen_train, corpus.train, pad_id)
        t_logits = teacher_logits(teacher, ids, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            s_logits = student(input_ids=ids, attention_mask=mask, use_cache=False).logits
        loss, parts = distill_loss(s_logits, t_logits, mask, s.ce_weight)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), s.clip)
        optim.step()
        sched.step()
        step += 1
        running = {k: 0.9 * running.get(k, v) + 0.1 * v for k, v in parts.items()}
        bar.update(1, **{k: f"{v:.3f}" for k, v in running.items()})
        if step % eval_every == 0 or step == s.steps:
            agreement = evaluate_agreement(student, teacher, heldout)
            history.append({"step": step, "wall_s": round(wall(), 1), "agreement_top1": agreement, **running})
            log.write(f"step {step}: held-out top-1 agreement {json.dumps(_round(agreement))}")
        if checkpoint_every > 0 and step % checkpoint_every == 0:
            save_checkpoint()
    bar.close()
    save_checkpoint()
    if step < s.steps:
        log.write(f"stopped at step {step} of {s.steps}; rerun the same command to resume")
        return {"steps": step, "finished": False}

    agreement = evaluate_agreement(student, teacher, heldout)
    model_dir = out / "model"
    export_student(student, tokenizer, model_dir)
    metrics = {
        "command": command,
        "settings": settings_dict,
        "steps": step,
        "finished": True,
        "tokens_seen": step * s.batch * s.seq_len,
        "wall_seconds_training": round(wall(), 1),
        "wall_seconds_total_this_run": round(time.perf_counter() - started, 1),
        "threads": torch.get_num_threads(),
        "generated_set": {
            "sequences": len(gen),
            "tokens": gen.tokens,
            "train_sequences": int(len(gen_train)),
            "heldout_sequences": int(len(gen_heldout)),
            "kinds": {k: gen.kinds.count(k) for k in sorted(set(gen.kinds))},
        },
        "corpus": {k: corpus.info.get(k) for k in ("key", "sources", "blocks", "seed", "heldout_fraction")},
        "agreement_top1_heldout": _round(agreement),
        "parameters": sum(p.numel() for p in student.parameters()),
        "history": history,
    }
    (out / METRICS_NAME).write_text(json.dumps(metrics, indent=2) + "\n")
    log.write(f"saved the draft to {model_dir}: held-out top-1 agreement {json.dumps(_round(agreement))}")
    return metrics


def _round(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in values.items()}


def export_student(student: Any, tokenizer: Any, dest: Path) -> None:
    """fp16 safetensors + config + tokenizer, loadable with `AutoModelForCausalLM.from_pretrained`."""
    dest.mkdir(parents=True, exist_ok=True)
    half = student.to(torch.float16)
    half.config.dtype = "float16"
    half.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    student.to(torch.float32)
