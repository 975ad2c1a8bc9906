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


def tiny_tokenizer():
    """A character-level fast tokenizer: 4 specials then printable ASCII (99 tokens), with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for i, char in enumerate(map(chr, range(32, 127))):
        vocab[char] = 4 + i
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    return tokenizer


TINY_VOCAB = 99


def save_tiny_pair(directory, *, eos: bool = True) -> tuple[str, str]:
    """Save a tiny float64 target and draft with the character tokenizer as HF folders; returns their paths.

    Used to start real server and client processes in tests without any download.
    """
    from pathlib import Path

    directory = Path(directory)
    tokenizer = tiny_tokenizer()
    paths = []
    for name, seed, layers in (("target", 0, 4), ("draft", 1, 1)):
        model = tiny_llama(seed, vocab_size=TINY_VOCAB, hidden_size=32, layers=layers)
        if eos:
            model.generation_config.eos_token_id = 2
            model.config.eos_token_id = 2
        path = directory / name
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths.append(str(path))
    return paths[0], paths[1]
