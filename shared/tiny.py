"""Tiny seeded random Llama models for tests and smoke runs (no download)."""

from __future__ import annotations

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM


def tiny_llama(
    seed: int,
    *,
    vocab_size: int = 64,
    hidden_size: int = 32,
    layers: int = 4,
    heads: int = 4,
    init_std: float = 0.3,
    dtype: torch.dtype = torch.float64,
) -> LlamaForCausalLM:
    """A random Llama; float64 by default so a window forward and one-token steps agree to the last bit
    that matters for argmax. A large `init_std` makes its distributions peaked, like a trained model's."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=512,
        initializer_range=init_std,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtype).eval()
    # No default EOS: tests choose the EOS id (or none) explicitly for both the oracle and the engine.
    model.generation_config = GenerationConfig(bos_token_id=0, pad_token_id=1)
    return model
