"""Text the target writes itself, the draft's best teacher data: batched generation from `GenPrompt`s,
cached (and resumable batch by batch) as an npz under ``$EESPEC_HOME/corpora``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shared.hashing import vocab_hash
from shared.models import eespec_home
from training.draft_prompts import GenPrompt

GEN_VERSION = 1


@dataclass
class GeneratedSet:
    """Token sequences (prompt + the target's continuation) and, per sequence, its kind and prompt length."""

    sequences: list[np.ndarray]
    kinds: list[str]
    prompt_lens: list[int]

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def tokens(self) -> int:
        return int(sum(len(s) for s in self.sequences))


def _save(path: Path, data: GeneratedSet, done_batches: int, info: dict) -> None:
    lengths = np.array([len(s) for s in data.sequences], dtype=np.int64)
    flat = np.concatenate(data.sequences).astype(np.int32) if data.sequences else np.zeros(0, np.int32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(
        tmp,
        flat=flat,
        lengths=lengths,
        prompt_lens=np.array(data.prompt_lens, dtype=np.int64),
        kinds=np.array(data.kinds),
        done_batches=np.array(done_batches),
        info=np.array(json.dumps(info)),
    )
    os.replace(tmp, path)


def _load(path: Path) -> tuple[GeneratedSet, int]:
    with np.load(path, allow_pickle=False) as z:
        offsets = np.concatenate([[0], np.cumsum(z["lengths"])])
        flat = z["flat"].astype(np.int64)
        seqs = [flat[offsets[i] : offsets[i + 1]] for i in range(len(z["lengths"]))]
        return GeneratedSet(seqs, [str(k) for k in z["kinds"]], [int(n) for n in z["prompt_lens"]]), int(
            z["done_batches"]
        )


def generate_set(
    target,
    tokenizer,
    prompts: list[GenPrompt],
    *,
    max_new_tokens: int = 96,
    batch: int = 32,
    sampled_fraction: float = 1 / 3,
    temperature: float = 0.8,
    seed: int = 0,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> GeneratedSet:
    """Continue every prompt with `target` (greedy for most, sampled at `temperature` for a `sampled_fraction`
    so that the draft also sees the contexts of sampled decoding). Each sequence is kept up to and including
    its first EOS. Finished batches are cached, so an interrupted run resumes where it stopped."""
    key_src = json.dumps(
        {
            "v": GEN_VERSION,
            "vocab": vocab_hash(tokenizer),
            "target": getattr(target.config, "_name_or_path", ""),
            "prompts": hashlib.sha256("\0".join(p.kind + p.text for p in prompts).encode()).hexdigest(),
            "max_new": max_new_tokens,
            "batch": batch,
            "sampled": sampled_fraction,
            "temperature": temperature,
            "seed": seed,
        },
        sort_keys=True,
    )
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    path = (cache_dir or eespec_home() / "corpora") / f"draft-gen-{key}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    data, done = _load(path) if path.is_file() else (GeneratedSet([], [], []), 0)
    encoded = [p.encode(tokenizer) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))  # similar lengths pad less
    batches = [order[i : i + batch] for i in range(0, len(order), batch)]
    if done >= len(batches):
        return data
    eos = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(batches), initial=done, desc="target generates", unit="batch", file=sys.stderr)
    for b in range(done, len(batches)):
        idx = batches[b]
        width = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
            mask[row, width - len(encoded[i]) :] = 1
        sampled = b % round(1 / sampled_fraction) == 0 if sampled_fraction > 0 else False
        torch.manual_seed(seed * 100_003 + b)
        with torch.no_grad():
            out = target.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=sampled,
                temperature=temperature if sampled else None,
                top_p=None,
                top_k=None,
                pad_token_id=pad,
            )
        for row, i in enumerate(idx):
            new = out[row, width:].tolist()
            cut = next((j + 1 for j, t in enumerate(new) if t in eos), len(new))
            data.sequences.append(np.array(encoded[i] + new[:cut], dtype=np.int64))
            data.kinds.append(prompts[i].kind)
            data.prompt_lens.append(len(encoded[i]))
        _save(path, data, b + 1, {"key": key, "settings": json.loads(key_src)})
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return data
