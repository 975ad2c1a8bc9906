"""Loading the target side: model, tokenizer, exit heads and the identity the handshake announces."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cloud_server.engine.early_exit import EarlyExitTarget
from cloud_server.engine.exits import ExitHeads, model_fingerprint, resolve_exit_heads
from shared.hashing import vocab_hash
from shared.models import eos_ids_of, resolve_model
from shared.precision import Precision, load_in_precision
from shared.vlm import is_vlm, load_processor, text_config


@dataclass
class LoadedTarget:
    """A served target: its name, the HF model, its tokenizer and the early-exit wrapper around it."""

    name: str
    model: Any
    tokenizer: Any
    early_exit: EarlyExitTarget
    vocab_hash: str
    eos_ids: list[int]
    processor: Any = None  # a vision-language target's processor (None for a text LM)

    @classmethod
    def build(
        cls, name: str, model, tokenizer, heads: ExitHeads | None, processor: Any = None
    ) -> LoadedTarget:
        return cls(
            processor=processor,
            name=name,
            model=model,
            tokenizer=tokenizer,
            early_exit=EarlyExitTarget(model, heads),
            vocab_hash=vocab_hash(tokenizer),
            eos_ids=eos_ids_of(model, tokenizer),
        )


def load_target(
    target: str,
    *,
    device: str = "cpu",
    exit_layers: Sequence[int] | None = None,
    exits_dir: str | Path | None = None,
    threads: int | None = None,
    dtype: Precision | str = "auto",
) -> LoadedTarget:
    """Load a target (known name, HF folder or .gguf) with the exit heads for `exit_layers`.

    Exit heads: `exits_dir` when given, else the shipped trained heads for a known target, else
    zero-initialised heads (the base model's own read-out). `dtype` is a precision name
    (`shared.precision.PRECISIONS`: float32, bfloat16, float16, int8 weight-only); the exit heads follow
    the model's activation dtype.
    """
    if threads:
        torch.set_num_threads(threads)
    model, tokenizer = load_in_precision(target, dtype, device=device)
    name = target.rstrip("/").split("/")[-1]
    layers = list(exit_layers) if exit_layers is not None else []
    fingerprint = model_fingerprint(model, tokenizer)
    hidden = text_config(model.config).hidden_size
    heads = resolve_exit_heads(name, hidden, layers, exits_dir, fingerprint=fingerprint)
    processor = load_processor(resolve_model(target)) if is_vlm(model) else None
    return LoadedTarget.build(name, model, tokenizer, heads, processor)
