"""Loading the target side: model, tokenizer, exit heads and the identity the handshake announces."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from cloud_server.early_exit import EarlyExitTarget
from cloud_server.exits import ExitHeads, resolve_exit_heads
from cloud_server.settings import ServerSettings
from shared.hashing import vocab_hash
from shared.models import load_model


@dataclass
class LoadedTarget:
    name: str
    model: Any
    tokenizer: Any
    target: EarlyExitTarget
    vocab_hash: str
    eos_ids: list[int]

    @classmethod
    def build(cls, name: str, model, tokenizer, heads: ExitHeads | None) -> LoadedTarget:
        return cls(
            name=name,
            model=model,
            tokenizer=tokenizer,
            target=EarlyExitTarget(model, heads),
            vocab_hash=vocab_hash(tokenizer),
            eos_ids=eos_ids_of(model, tokenizer),
        )


def eos_ids_of(model, tokenizer) -> list[int]:
    """EOS ids from the generation config, else the tokenizer's."""
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return []
    return [int(e) for e in eos] if isinstance(eos, list | tuple) else [int(eos)]


def load_target(settings: ServerSettings) -> LoadedTarget:
    if settings.threads:
        torch.set_num_threads(settings.threads)
    model, tokenizer = load_model(settings.target, device=settings.device)
    name = settings.target.rstrip("/").split("/")[-1]
    heads = resolve_exit_heads(name, model.config.hidden_size, settings.exit_layers, settings.exits_dir)
    return LoadedTarget.build(name, model, tokenizer, heads)
