"""A model's EOS ids: one rule for the target, the draft and the grammar masks."""

from __future__ import annotations


def eos_ids_of(model, tokenizer) -> list[int]:
    """EOS ids from the generation config, else the tokenizer's."""
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return []
    return [int(e) for e in eos] if isinstance(eos, list | tuple) else [int(eos)]
