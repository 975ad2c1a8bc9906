"""Row-wise eager attention: a window's query rows computed exactly as one-token steps would compute them.

Exact greedy speculation needs a window forward to give the same logits as one-token steps. In float32 the
differences are in the last bits and almost never flip an argmax; in bfloat16 they flip near-ties often
(3 of 9 real generations of SmolLM2 differed from `generate()` with SDPA or plain eager attention). The
linear layers, norms and activations compute each row on its own; attention does not: a window's query
rows share one QKᵀ / softmax / PV product over the longest key length, and the PV reduction's blocking
depends on that length. Here each query row i of a short forward attends to exactly its own keys
[: kv_len − q_len + i + 1] through transformers' own eager attention, with the same shapes a one-token step
has, so the result is bit-identical. Long forwards (prefills) run batched: `generate()` and the engine
prefill the same prompt the same way, and `TargetSession.restore` re-prefills in the same pieces.

Registered with transformers' `AttentionInterface` under `ROWWISE_ATTENTION`; the mask is eager's.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask
from transformers.models.llama.modeling_llama import eager_attention_forward

ROWWISE_ATTENTION = "eespec_rowwise"
# Forwards of at most this many new tokens run row by row (windows, steps); longer ones (prefills) batched.
ROWWISE_MAX_QUERIES = 32


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
    packed = kwargs.pop("packed_attention", None)
    if packed is not None:  # a batched forward of many sessions (cloud_server.engine.batched)
        return packed.attend(module, query, scaling, dropout, **kwargs)
    q_len, kv_len = query.shape[2], key.shape[2]
    if q_len > ROWWISE_MAX_QUERIES:
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


def refill_pieces(ids: list[int], prompt_len: int) -> list[list[int]]:
    """How to re-feed a cached sequence (prompt, then generated tokens) so that its KV cache is bit-identical
    to the one a generation built: the prompt in one forward, as its prefill was, then the rest in short
    forwards, which are row-wise and so equal to the windows and steps that first computed them."""
    rest = ids[prompt_len:]
    chunks = [rest[i : i + ROWWISE_MAX_QUERIES] for i in range(0, len(rest), ROWWISE_MAX_QUERIES)]
    return [piece for piece in [ids[:prompt_len], *chunks] if piece]


AttentionInterface.register(ROWWISE_ATTENTION, rowwise_attention_forward)
ALL_MASK_ATTENTION_FUNCTIONS.register(ROWWISE_ATTENTION, eager_mask)
