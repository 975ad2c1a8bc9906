"""Hashes both sides compute identically (DESIGN.md, "Text prompts")."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence


def ids_hash(token_ids: Sequence[int]) -> str:
    """First 16 hex digits of the sha256 of the compact JSON list of ids (prompt_hash, committed_hash)."""
    payload = json.dumps([int(t) for t in token_ids], separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def vocab_hash_of(vocab: Mapping[str, int]) -> str:
    """First 16 hex digits of the sha256 of the vocabulary sorted by id, added tokens included."""
    items = sorted(vocab.items(), key=lambda item: item[1])
    payload = json.dumps(items, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def vocab_hash(tokenizer) -> str:
    """vocab_hash of a transformers tokenizer (its get_vocab() includes added tokens)."""
    return vocab_hash_of(tokenizer.get_vocab())
