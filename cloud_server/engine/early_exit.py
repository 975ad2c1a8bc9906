"""The early-exit target: runs windows through the model's own modules and hands each exit's logits to a
callback while the remaining decoder layers still run.

The exit logic (`EarlyExitTarget.on_layer_output`) does not know how it is triggered. In eager mode a
forward hook on the decoder layer calls it; a compiled or CUDA-graph path would run the decoder in
segments split at the exit layers and call it between segments (hooks do not fire inside a graph).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

from cloud_server.engine.batched import Segment, can_pack, packed_forward
from cloud_server.engine.exits import ExitHeads, ShortlistReadout, exit_logits
from shared.kv import CachedLM
from shared.vlm import cached_lm_for, language_decoder, text_config

log = logging.getLogger("eespec.engine.early_exit")
ExitCallback = Callable[[int, torch.Tensor, float], None]
"""(layer, exit logits [keep, V], milliseconds since the forward began)."""


def decoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The decoder layer stack: `model.model.layers` for the Llama / Qwen2 / SmolLM / Mistral families,
    the language model's (`get_decoder().layers`) for a vision-language model."""
    return language_decoder(model).layers


@dataclass
class _ActiveForward:
    keep: int
    layers: frozenset[int]
    callback: ExitCallback
    started: float
    extra_ids: tuple[int, ...] = ()


class EarlyExitTarget:
    """A causal LM with exit heads after chosen decoder layers (1-based: exit L runs after layer L)."""

    def __init__(self, model: PreTrainedModel, heads: ExitHeads | None = None) -> None:
        self.model = model
        self.layers = decoder_layers(model)
        self.norm: nn.Module = language_decoder(model).norm
        self.lm_head: nn.Module = model.get_output_embeddings()
        self.heads = heads
        self._active: _ActiveForward | None = None
        self.exit_failures = 0  # exits whose head or callback raised (their early frames were dropped)
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self.shortlist: ShortlistReadout | None = None
        if heads is not None:
            bad = [layer for layer in heads.layers if not 1 <= layer < len(self.layers)]
            if bad:
                raise ValueError(
                    f"exit layers {bad} outside 1..{len(self.layers) - 1} "
                    f"for a {len(self.layers)}-layer model"
                )
            heads.to(device=model.device, dtype=model.dtype)
            if heads.shortlist is not None:
                vocab = int(text_config(model.config).vocab_size)
                self.shortlist = ShortlistReadout(self.lm_head, heads.shortlist, vocab).to(model.device)
            for layer in heads.layers:
                self._hooks.append(self.layers[layer - 1].register_forward_hook(self._hook_for(layer)))

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def exit_layers(self) -> tuple[int, ...]:
        return self.heads.layers if self.heads is not None else ()

    def new_kv_cache(self) -> CachedLM:
        return cached_lm_for(self.model)

    def forward(
        self,
        kv_cache: CachedLM,
        new_ids: Sequence[int],
        keep: int,
        on_exit: ExitCallback | None = None,
        layers: Sequence[int] | None = None,
        extra_ids: Sequence[int] = (),
    ) -> torch.Tensor:
        """Forward `new_ids` on `kv_cache`; final logits of the last `keep` positions.

        With `on_exit`, each requested exit's logits for those positions are passed to it mid-forward.
        `extra_ids` (the window's draft tokens) join the exits' shortlist when they read one.
        """
        if on_exit is not None and self.heads is not None:
            wanted = frozenset(self.exit_layers if layers is None else layers) & frozenset(self.exit_layers)
            extra = tuple(int(t) for t in extra_ids)
            self._active = _ActiveForward(keep, wanted, on_exit, time.perf_counter(), extra)
        try:
            return kv_cache.forward(new_ids, keep=keep)
        finally:
            self._active = None

    def on_layer_output(self, layer: int, hidden: torch.Tensor) -> None:
        """Exit logic: the exit head's logits for the kept positions, handed to the active callback."""
        active = self._active
        if active is None or layer not in active.layers or self.heads is None:
            return
        # Disarm while the callback runs: it may run other forwards (pre-drafting), even on this same model.
        self._active = None
        try:
            self.run_exit(layer, hidden[0, -active.keep :], active.extra_ids, active.callback, active.started)
        finally:
            self._active = active

    def run_exit(
        self,
        layer: int,
        rows: torch.Tensor,
        extra_ids: tuple[int, ...],
        callback: ExitCallback,
        started: float,
    ) -> None:
        """Exit `layer`'s logits for hidden `rows` [keep, H] to `callback`; a failure drops its frame only."""
        if self.heads is None:
            return
        try:
            with torch.inference_mode():
                if self.shortlist is not None:
                    normed = self.norm(self.heads.adapter(layer)(rows))
                    logits = self.shortlist.logits(normed, extra_ids)
                else:
                    logits = exit_logits(rows, self.heads.adapter(layer), self.norm, self.lm_head)
            callback(layer, logits, (time.perf_counter() - started) * 1000.0)
        except Exception:
            # An early frame is a prediction only: a failing exit drops that frame, never the forward.
            self.exit_failures += 1
            if self.exit_failures == 1:  # the first with its traceback; later ones are counted only
                log.warning(
                    "the exit after layer %d failed; its early frame is dropped", layer, exc_info=True
                )

    @property
    def can_batch(self) -> bool:
        """Whether `forward_batch` can pack sessions into one forward (it needs row-wise attention)."""
        return can_pack(self.model)

    def forward_batch(self, segments: Sequence[Segment]) -> list[torch.Tensor]:
        """One forward over many sessions' caches (`batched.packed_forward`); with one segment, a model
        without row-wise attention, or a cache that cannot be packed (a VLM's), the segments run one by one
        through `forward`."""
        packable = all(getattr(seg.kv_cache, "packable", True) for seg in segments)
        if len(segments) > 1 and self.can_batch and packable:
            for seg in segments:
                if seg.on_exit is not None:
                    seg.exit_layers = frozenset(seg.exit_layers) & frozenset(self.exit_layers)
            return packed_forward(self, segments)
        return [
            self.forward(
                seg.kv_cache,
                seg.new_ids,
                seg.keep,
                on_exit=seg.on_exit,
                layers=sorted(seg.exit_layers),
                extra_ids=seg.extra_ids,
            )
            for seg in segments
        ]

    def _hook_for(self, layer: int) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            self.on_layer_output(layer, hidden)

        return hook

    def close(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
