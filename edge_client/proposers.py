"""Cheap proposers beside the draft model: prompt lookup (n-gram copying) and a per-round combination.

Both have the `DraftEngine` interface (`draft(prefix, k, sampling, cancel) -> DraftWindow | None`), so the
in-process decoder, the edge client, its pre-drafter, `eespec generate` and the bench use them unchanged.

Prompt lookup (Saxena 2023; transformers' `prompt_lookup_num_tokens`): find the latest earlier occurrence
of the prefix's last n tokens (longest n first) and propose the tokens that followed it. Nearly free, and
strong where the output repeats its context: code, and prompts that define their own vocabulary (robot
action lists). It is deterministic, so when sampling its proposal for a token is q′ = 1 on that token
(`{ids: [tok], p: [1.0]}`): speculative sampling stays exact for any proposal (DESIGN.md, "Models").
A window is a pure function of its prefix, as pre-drafting needs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from edge_client.draft import DraftEngine, DraftGrammar, DraftWindow
from shared.sampling import SamplingParams, SparseProposal

NGRAM_SUFFIX = "+ngram"


def ngram_lookup(
    prefix: Sequence[int], k: int, *, max_ngram: int = 4, min_ngram: int = 2, min_tokens: int = 1
) -> list[int]:
    """Up to k tokens that followed the latest earlier occurrence of the prefix's last n tokens.

    Longest n first (max_ngram down to min_ngram); an occurrence counts when at least `min_tokens`
    tokens follow it. Empty when nothing matches.
    """
    ids = list(prefix)
    length = len(ids)
    for n in range(min(max_ngram, length - 1), min_ngram - 1, -1):
        suffix = ids[length - n :]
        first = suffix[0]
        # Latest start first; the occurrence must end before the suffix itself starts.
        for start in range(length - n - 1, -1, -1):
            if ids[start] != first or ids[start : start + n] != suffix:
                continue
            follow = ids[start + n : start + n + k]
            if len(follow) >= min_tokens:
                return follow
    return []


class NgramProposer:
    """Prompt-lookup proposals; `draft` returns None when the prefix has no match (or was cancelled)."""

    name = "ngram"

    def __init__(self, *, max_ngram: int = 4, min_ngram: int = 2) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError("need 1 ≤ min_ngram ≤ max_ngram")
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram

    def draft(
        self, prefix: Sequence[int], k: int, sampling: SamplingParams, cancel: threading.Event | None = None
    ) -> DraftWindow | None:
        if k < 1:
            raise ValueError("a window has at least one token")
        t0 = time.perf_counter()
        if cancel is not None and cancel.is_set():
            return None
        tokens = ngram_lookup(prefix, k, max_ngram=self.max_ngram, min_ngram=self.min_ngram)
        if not tokens:
            return None
        proposals = None
        if not sampling.greedy:  # deterministic: q′ = 1 on the copied token
            proposals = tuple(SparseProposal(ids=(t,), p=(1.0,)) for t in tokens)
        return DraftWindow(
            prefix=tuple(int(t) for t in prefix),
            tokens=tuple(tokens),
            proposals=proposals,
            draft_s=time.perf_counter() - t0,
        )


class CombinedProposer:
    """Per round, the n-gram proposal when the prefix has one, else the draft model's window.

    Counts which proposer served each window (`served`), for the metrics.
    """

    def __init__(self, model: DraftEngine, ngram: NgramProposer | None = None) -> None:
        self.model_engine = model
        self.ngram = ngram or NgramProposer()
        self.served = {"ngram": 0, "model": 0}

    @property
    def model(self):
        return self.model_engine.model

    @property
    def kv_cache(self):
        return self.model_engine.kv_cache

    def grammar_for(self, grammar, prompt_len: int, tokenizer=None) -> DraftGrammar | None:
        return self.model_engine.grammar_for(grammar, prompt_len, tokenizer)

    def set_images(self, images, prompt_ids) -> None:
        self.model_engine.set_images(images, prompt_ids)

    def draft(
        self,
        prefix: Sequence[int],
        k: int,
        sampling: SamplingParams,
        cancel: threading.Event | None = None,
        grammar: DraftGrammar | None = None,
    ) -> DraftWindow | None:
        # Under a grammar the model drafts (it proposes legal tokens only); copied n-grams would ignore it.
        window = self.ngram.draft(prefix, k, sampling, cancel) if grammar is None else None
        if window is not None:
            self.served["ngram"] += 1
            return window
        if cancel is not None and cancel.is_set():
            return None
        window = self.model_engine.draft(prefix, k, sampling, cancel, grammar)
        if window is not None:
            self.served["model"] += 1
        return window


def split_draft_name(name: str) -> tuple[str, bool]:
    """`smollm2-135m-draft+ngram` → ("smollm2-135m-draft", True); a plain name → (name, False)."""
    if name.endswith(NGRAM_SUFFIX):
        return name[: -len(NGRAM_SUFFIX)], True
    return name, False


def make_proposer(model_engine: DraftEngine, *, ngram: bool):
    """The draft model alone, or combined with prompt lookup."""
    return CombinedProposer(model_engine) if ngram else model_engine
