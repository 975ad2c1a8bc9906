"""Row-wise eager attention: a window's query rows computed exactly as one-token steps would compute them.

Exact greedy speculation needs a window forward to give the same logits as one-token steps. In float32 the
differences are in the last bits and almost never flip an argmax; in bfloat16 they flip near-ties often
(3 of 9 real generations of SmolLM2 differed from `generate()` with SDPA or plain eager attention). The
linear layers, norms and activations compute each row on its own; attention does not: a window's query
rows share one QKᵀ / softmax / PV product over the longest key length, and the PV reduction's blocking
depends on that length. Here each query row i of a short forward attends to exactly its own keys
[: kv_len − q_len + i + 1] through transformers' own eager attention, with the same shapes a one-token step
has, so the result is bit-identical. Long forwards (prefills) run batched through eager attention, and so does
each chunk of a chunked prefill: a prompt fed in chunks of more than `ROWWISE_MAX_QUERIES` rows, each chunk
attending to the whole prompt's key length (keys past it padded and masked, `_pad_keys`, `prefill_plan`),
gives the very keys, values and logits of the one-shot prefill `generate()` runs (tests/test_prefill_chunks.py
checks it bit for bit, in bf16, on tiny and real models), because every row of such a chunk goes through
the same kernels, with the same reduction lengths, as in the one-shot prefill. Without the padding the PV
product's reduction over a shorter key length rounds differently on some CPUs (AMD EPYC, measured).
`prompt_pieces` never makes a chunk that short; `TargetSession.restore` re-prefills in the same pieces.

Registered with transformers' `AttentionInterface` under `ROWWISE_ATTENTION`; the mask is eager's.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask
from transformers.models.llama.modeling_llama import eager_attention_forward

ROWWISE_ATTENTION = "eespec_rowwise"
# Forwards of at most this many new tokens run row by row (windows, steps); longer ones (prefills) batched.
ROWWISE_MAX_QUERIES = 32
# Forward kwarg of a prefill chunk: the one-shot prefill's length, to which its keys are padded (`_pad_keys`).
KEYS_TO = "eespec_keys_to"


def rowwise_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    keys_to = kwargs.pop(KEYS_TO, None)
    packed = kwargs.pop("packed_attention", None)
    if packed is not None:  # a batched forward of many sessions (cloud_server.engine.batched)
        return packed.attend(module, query, scaling, dropout, **kwargs)
    q_len, kv_len = query.shape[2], key.shape[2]
    if q_len > ROWWISE_MAX_QUERIES:
        if keys_to is not None and keys_to > kv_len:
            key, value, attention_mask = _pad_keys(key, value, attention_mask, keys_to)
        out, _ = eager_attention_forward(
            module, query, key, value, attention_mask, scaling, dropout, **kwargs
        )
        return out, None
    rows = []
    for i in range(q_len):
        end = kv_len - q_len + i + 1
        mask = None if attention_mask is None else attention_mask[:, :, i : i + 1, :end].contiguous()
        out, _ = eager_attention_forward(
            module,
            query[:, :, i : i + 1].contiguous(),
            key[:, :, :end].contiguous(),
            value[:, :, :end].contiguous(),
            mask,
            scaling,
            dropout,
            **kwargs,
        )
        rows.append(out)
    return torch.cat(rows, dim=1), None


def _pad_keys(key, value, attention_mask, keys_to: int):
    """Keys and values padded with zeros to `keys_to`, masked out: a prefill chunk then runs the very
    products (same key length, same reductions) its rows run inside the one-shot prefill of `keys_to`
    tokens, where the keys past the chunk are real but masked. Masked scores are the mask's minimum either
    way, their probabilities 0, and 0 · value adds nothing."""
    pad = keys_to - key.shape[2]
    key = torch.cat([key, key.new_zeros(*key.shape[:2], pad, key.shape[3])], dim=2)
    value = torch.cat([value, value.new_zeros(*value.shape[:2], pad, value.shape[3])], dim=2)
    if attention_mask is None:
        raise ValueError("a padded prefill chunk needs the causal mask")
    mask = attention_mask[..., : keys_to - pad]
    if mask.dtype == torch.bool:
        filler = mask.new_zeros(*mask.shape[:3], pad)
    else:
        filler = mask.new_full((*mask.shape[:3], pad), torch.finfo(mask.dtype).min)
    return key, value, torch.cat([mask, filler], dim=-1)


# A prompt longer than this is prefilled in chunks, one scheduler call each, so that other sessions'
# windows run between them (issue 12, item 13). Chunks are never shorter than `MIN_PREFILL_CHUNK`.
DEFAULT_PREFILL_CHUNK = 256
MIN_PREFILL_CHUNK = 2 * (ROWWISE_MAX_QUERIES + 1)


def prompt_pieces(prompt: list[int], chunk_tokens: int | None = DEFAULT_PREFILL_CHUNK) -> list[list[int]]:
    """The prompt in the pieces a prefill feeds: one piece up to `chunk_tokens` (None or 0: never split),
    else ceil(n / chunk_tokens) pieces of near-equal length, each longer than `ROWWISE_MAX_QUERIES` rows so
    that it runs batched like the one-shot prefill it must equal."""
    if chunk_tokens and chunk_tokens < MIN_PREFILL_CHUNK:
        raise ValueError(f"prefill chunks must be at least {MIN_PREFILL_CHUNK} tokens, not {chunk_tokens}")
    n = len(prompt)
    if not chunk_tokens or n <= chunk_tokens:
        return [list(prompt)] if prompt else []
    count = -(-n // chunk_tokens)
    bounds = [round(i * n / count) for i in range(count + 1)]
    return [list(prompt[a:b]) for a, b in itertools.pairwise(bounds)]


def refill_pieces(
    ids: list[int], prompt_len: int, chunk_tokens: int | None = DEFAULT_PREFILL_CHUNK
) -> list[list[int]]:
    """How to re-feed a cached sequence (prompt, then generated tokens) so that its KV cache is bit-identical
    to the one a generation built: the prompt as its prefill fed it (`prompt_pieces`), then the rest in short
    forwards, which are row-wise and so equal to the windows and steps that first computed them."""
    rest = ids[prompt_len:]
    chunks = [rest[i : i + ROWWISE_MAX_QUERIES] for i in range(0, len(rest), ROWWISE_MAX_QUERIES)]
    return [piece for piece in [*prompt_pieces(ids[:prompt_len], chunk_tokens), *chunks] if piece]


class Piece(NamedTuple):
    """One forward of a (re-)prefill: its ids, and the `keys_to` it is fed with (`CachedLM.forward`)."""

    ids: list[int]
    keys_to: int | None


def prefill_plan(
    ids: list[int], prompt_len: int, chunk_tokens: int | None = DEFAULT_PREFILL_CHUNK
) -> list[Piece]:
    """`refill_pieces`, each with its `keys_to`: the prompt's length for every chunk of a prompt fed in more
    than one chunk (so each chunk attends as inside the one-shot prefill, `_pad_keys`), else None."""
    pieces = refill_pieces(ids, prompt_len, chunk_tokens)
    chunks = len(prompt_pieces(ids[:prompt_len], chunk_tokens))
    keys_to = prompt_len if chunks > 1 else None
    return [Piece(piece, keys_to if i < chunks else None) for i, piece in enumerate(pieces)]


AttentionInterface.register(ROWWISE_ATTENTION, rowwise_attention_forward)
ALL_MASK_ATTENTION_FUNCTIONS.register(ROWWISE_ATTENTION, eager_mask)
