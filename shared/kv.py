"""A causal LM with its KV cache and the ids the cache holds: forward new tokens, roll back, resync."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache, PreTrainedModel

from shared.attention import KEYS_TO


class CachedLM:
    """One sequence's KV cache over a model, with rollback by `DynamicCache.crop`.

    Invariant: `ids` are exactly the tokens whose keys and values the cache holds.
    """

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        self.cache = DynamicCache(config=model.config)
        self.ids: list[int] = []

    @property
    def device(self) -> torch.device:
        return self.model.device

    def forward(self, new_ids: Sequence[int], keep: int = 1, keys_to: int | None = None) -> torch.Tensor:
        """Run `new_ids` on top of the cache; logits of the last `keep` positions, [keep, V].

        `keys_to`: a chunk of a prompt prefilled in chunks passes the whole prompt's length, so that its
        attention runs as the one-shot prefill's does (`shared.attention`, row-wise attention only)."""
        if not new_ids:
            raise ValueError("forward needs at least one new token")
        if keep < 1 or keep > len(new_ids):
            raise ValueError(f"keep must be in 1..{len(new_ids)}")
        input_ids = torch.tensor([list(new_ids)], dtype=torch.long, device=self.device)
        with torch.inference_mode():
            extra = {} if keys_to is None else {KEYS_TO: keys_to}
            out = self.model(
                input_ids=input_ids, cache=self.cache, use_cache=True, logits_to_keep=keep, **extra
            )
        self.ids.extend(int(t) for t in new_ids)
        return out.logits[0]

    def truncate(self, length: int) -> None:
        """Keep only the first `length` cached tokens."""
        if length < 0 or length > len(self.ids):
            raise ValueError(f"cannot truncate a cache of {len(self.ids)} tokens to {length}")
        remove = len(self.ids) - length
        if remove:
            self.cache.crop(-remove)
            del self.ids[length:]

    def sync(self, sequence: Sequence[int]) -> list[int]:
        """Roll back to the longest cached prefix of `sequence` (keeping at least its last token out).

        Returns the tokens still to feed; there is always at least one, so feeding them yields the logits
        for the token after `sequence`.
        """
        limit = min(len(self.ids), len(sequence) - 1)
        common = 0
        while common < limit and self.ids[common] == sequence[common]:
            common += 1
        self.truncate(common)
        return [int(t) for t in sequence[common:]]

    def reset(self) -> None:
        self.cache = DynamicCache(config=self.model.config)
        self.ids = []

    @property
    def nbytes(self) -> int:
        total = 0
        for layer in getattr(self.cache, "layers", []):
            for name in ("keys", "values"):
                tensor = getattr(layer, name, None)
                if isinstance(tensor, torch.Tensor):
                    total += tensor.numel() * tensor.element_size()
        return total
