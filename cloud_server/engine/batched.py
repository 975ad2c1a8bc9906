"""One forward over the pending work of many sessions, each on its own KV cache, bit-identical per session
to that session's own forward.

The new tokens of every session are packed into one sequence: embedding, rotary embedding, norms, linear
layers and the LM head compute each row on its own, so packing changes nothing there. Attention is the one
place rows meet: `PackedKV` hands each session's slice of the new keys and values to that session's own
cache, and each session's query rows then attend to that session's keys alone, through the row-wise
attention (`shared.attention`) with the very causal mask the session's own forward would build. No padding,
so no padded shapes change the reduction order.

The model's own modules run here (embedding, decoder layers, rotary embedding, norm, LM head), one decoder
layer at a time, so each session's exits fire between layers from the batch's hidden states: the segment
form of the exit seam that a compiled path needs anyway.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from shared.attention import ROWWISE_ATTENTION, rowwise_attention_forward
from shared.kv import CachedLM

if TYPE_CHECKING:
    from cloud_server.engine.early_exit import EarlyExitTarget, ExitCallback


# The most rows one packed forward should hold. Measured here (2026-12-02, x86 CPU, torch 2.13, one thread):
# a bfloat16 linear layer of SmolLM2's shapes gives each row the very bits a one-row product gives for up to
# 32 rows, and different bits from 33 on (another kernel). Within it a batch is bit-identical per session.
EXACT_BATCH_ROWS = 32


@dataclass
class Segment:
    """One session's share of a batched forward: `new_ids` on top of `kv_cache`, the last `keep` rows kept.

    `on_exit` hears the exit logits of those rows after each layer in `exit_layers`; `extra_ids` join an exit
    shortlist (the window's draft tokens)."""

    kv_cache: CachedLM
    new_ids: Sequence[int]
    keep: int
    on_exit: ExitCallback | None = None
    exit_layers: frozenset[int] = field(default_factory=frozenset)
    extra_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.new_ids:
            raise ValueError("a segment needs at least one new token")
        if not 1 <= self.keep <= len(self.new_ids):
            raise ValueError(f"keep must be in 1..{len(self.new_ids)}")


def can_pack(model) -> bool:
    """Packed forwards need the row-wise attention: it is what makes them equal to per-session forwards."""
    return getattr(model.config, "_attn_implementation", None) == ROWWISE_ATTENTION


class PackedKV:
    """Passed to the decoder layers as their cache and as the `packed_attention` of the row-wise attention.

    `update` appends each segment's new keys and values to its own session cache and remembers the full
    per-session keys of that layer; `attend` then runs each segment's query rows against them."""

    def __init__(self, segments: Sequence[Segment]) -> None:
        self.segments = list(segments)
        self.bounds: list[tuple[int, int]] = []
        start = 0
        for seg in self.segments:
            self.bounds.append((start, start + len(seg.new_ids)))
            start += len(seg.new_ids)
        self.total = start
        self._full: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        full = []
        for seg, (a, b) in zip(self.segments, self.bounds, strict=True):
            full.append(seg.kv_cache.cache.update(key_states[:, :, a:b], value_states[:, :, a:b], layer_idx))
        self._full[layer_idx] = full
        return key_states, value_states

    def attend(
        self, module: torch.nn.Module, query: torch.Tensor, scaling: float, dropout: float, **kwargs
    ) -> tuple[torch.Tensor, None]:
        outs = []
        for (a, b), (keys, values) in zip(self.bounds, self._full.pop(module.layer_idx), strict=True):
            q_len, kv_len = b - a, keys.shape[2]
            outs.append(
                rowwise_attention_forward(
                    module,
                    query[:, :, a:b],
                    keys,
                    values,
                    causal_mask(q_len, kv_len, query.dtype, query.device),
                    scaling,
                    dropout,
                    **kwargs,
                )[0]
            )
        return torch.cat(outs, dim=1), None


def causal_mask(q_len: int, kv_len: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """transformers' eager causal mask for `q_len` new rows over `kv_len` keys: 0 allowed, dtype min not."""
    rows = torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)
    allowed = torch.arange(kv_len, device=device)[None, :] <= rows
    mask = torch.where(allowed, torch.zeros((), device=device, dtype=dtype), torch.finfo(dtype).min)
    return mask[None, None]


def packed_forward(target: EarlyExitTarget, segments: Sequence[Segment]) -> list[torch.Tensor]:
    """Run every segment in one forward; the final logits of each segment's last `keep` rows, [keep, V].

    On an exception the sessions' caches may hold some layers' new keys and not others': the caller rolls
    them back (their `ids` are extended only on success, as `CachedLM.forward` does)."""
    model = target.model
    if not can_pack(model):
        raise ValueError(f"packed forwards need the {ROWWISE_ATTENTION!r} attention implementation")
    inner = model.model
    device = model.device
    ids: list[int] = []
    positions: list[int] = []
    for seg in segments:
        past = len(seg.kv_cache.ids)
        ids.extend(int(t) for t in seg.new_ids)
        positions.extend(range(past, past + len(seg.new_ids)))
    packed = PackedKV(segments)
    started = time.perf_counter()
    with torch.inference_mode():
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        position_ids = torch.tensor([positions], dtype=torch.long, device=device)
        hidden = inner.embed_tokens(input_ids)
        position_embeddings = inner.rotary_emb(hidden, position_ids=position_ids)
        for index, layer in enumerate(target.layers[: model.config.num_hidden_layers]):
            out = layer(
                hidden,
                attention_mask=None,
                position_ids=position_ids,
                cache=packed,
                use_cache=True,
                position_embeddings=position_embeddings,
                packed_attention=packed,
            )
            hidden = out[0] if isinstance(out, tuple) else out
            for seg, (_, b) in zip(segments, packed.bounds, strict=True):
                if seg.on_exit is not None and index + 1 in seg.exit_layers:
                    target.run_exit(
                        index + 1, hidden[0, b - seg.keep : b], seg.extra_ids, seg.on_exit, started
                    )
        hidden = inner.norm(hidden)
        bounds = zip(segments, packed.bounds, strict=True)
        kept = torch.cat([hidden[:, b - seg.keep : b] for seg, (_, b) in bounds], dim=1)
        logits = model.get_output_embeddings()(kept)[0]
    for seg in segments:
        seg.kv_cache.ids.extend(int(t) for t in seg.new_ids)
    out_rows, start = [], 0
    for seg in segments:
        out_rows.append(logits[start : start + seg.keep])
        start += seg.keep
    return out_rows
