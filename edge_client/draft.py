"""The draft engine: proposes windows from a committed prefix with the small model."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedModel

from shared.grammar import GrammarMatcher, GrammarSpec, apply_mask, grammar_compiler, parse_grammar
from shared.models import eos_ids_of
from shared.protocol import Draft, ProposalEntry
from shared.sampling import (
    DEFAULT_Q_TOP_K,
    SamplingParams,
    SparseProposal,
    keyed_uniform,
    sample_from_proposal,
    truncated_proposal,
)
from shared.vlm import VisionCachedLM, VisionInputs, cached_lm_for, text_config


@dataclass(frozen=True)
class DraftWindow:
    """k draft tokens extending `prefix` (and, when sampling, the proposal each was drawn from)."""

    prefix: tuple[int, ...]
    tokens: tuple[int, ...]
    proposals: tuple[SparseProposal, ...] | None
    draft_s: float

    def to_message(self, round: int) -> Draft:
        q = None
        if self.proposals is not None:
            q = [ProposalEntry(ids=list(p.ids), p=list(p.p)) for p in self.proposals]
        return Draft(round=round, pos=len(self.prefix), tokens=list(self.tokens), q=q)


@dataclass
class DraftGrammar:
    """The grammar on the draft side: a matcher over the tokens after the prompt's `prompt_len`."""

    matcher: GrammarMatcher
    prompt_len: int


class DraftEngine:
    """Drafts greedily, or samples from q′ with randomness keyed by (seed, absolute position).

    Keying by position makes a window a pure function of its prefix: a window pre-drafted from a
    predicted prefix equals the one drafted after the verdict whenever the prefixes match.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        q_top_k: int = DEFAULT_Q_TOP_K,
        tokenizer: Any = None,
        processor: Any = None,
    ) -> None:
        self.model = model
        self.q_top_k = q_top_k
        self.kv_cache = cached_lm_for(model)
        self.processor = processor  # a VLM draft's processor (its images go into its own prefill)
        # One KV cache: drafts from several threads (a pre-draft still running when another starts) take
        # turns instead of interleaving their writes.
        self._lock = threading.Lock()
        self.tokenizer = tokenizer  # needed only to apply a grammar to the draft

    def set_images(self, images: Sequence[Any], prompt_ids: Sequence[int]) -> None:
        """The images of the next generation (none for a text prompt): the draft prefills them once."""
        if not isinstance(self.kv_cache, VisionCachedLM):
            if images:
                raise ValueError("this draft model takes no images")
            return
        vision = VisionInputs.build(self.processor, self.model, images, prompt_ids) if images else None
        with self._lock:
            self.kv_cache.set_images(vision)

    def grammar_for(
        self, grammar: GrammarSpec | Mapping[str, Any] | None, prompt_len: int, tokenizer: Any = None
    ) -> DraftGrammar | None:
        """The draft's own matcher for a generation under `grammar`, or None without a grammar or a
        tokenizer (the draft then proposes unconstrained tokens; exactness never depends on it)."""
        spec = parse_grammar(grammar)
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        if spec is None or tokenizer is None:
            return None
        eos = eos_ids_of(self.model, tokenizer)
        if not eos:
            return None
        compiler = grammar_compiler(
            tokenizer, vocab_size=int(text_config(self.model.config).vocab_size), eos_ids=eos
        )
        return DraftGrammar(compiler.matcher(spec), prompt_len)

    def draft(
        self,
        prefix: Sequence[int],
        k: int,
        sampling: SamplingParams,
        cancel: threading.Event | None = None,
        grammar: DraftGrammar | None = None,
    ) -> DraftWindow | None:
        """A window of k tokens after `prefix`; None if `cancel` was set before it was complete.

        With `grammar` the draft proposes only tokens the grammar allows (its logits masked before the
        argmax or q′), unless `prefix` itself already left the grammar.
        """
        if k < 1:
            raise ValueError("a window has at least one token")
        with self._lock:
            return self._draft(prefix, k, sampling, cancel, grammar)

    def _draft(
        self,
        prefix: Sequence[int],
        k: int,
        sampling: SamplingParams,
        cancel: threading.Event | None,
        grammar: DraftGrammar | None,
    ) -> DraftWindow | None:
        t0 = time.perf_counter()
        pending = self.kv_cache.sync(prefix)
        logits = self.kv_cache.forward(pending, keep=1)[-1]
        matcher = None
        if grammar is not None and grammar.matcher.sync(prefix[grammar.prompt_len :]):
            # The window is drafted on a copy: the engine's matcher stays at the prefix.
            matcher = grammar.matcher.fork() if not grammar.matcher.ended else None
        tokens: list[int] = []
        proposals: list[SparseProposal] = []
        for i in range(k):
            if cancel is not None and cancel.is_set():
                return None
            if matcher is not None:
                logits = apply_mask(logits, matcher.allowed())
            if sampling.greedy:
                token = int(logits.argmax().item())
            else:
                proposal = truncated_proposal(logits, sampling.temperature, self.q_top_k)
                token = sample_from_proposal(proposal, keyed_uniform(sampling.seed, len(prefix) + i))
                proposals.append(proposal)
            tokens.append(token)
            if matcher is not None:
                matcher.commit([token])
                if matcher.ended:
                    matcher = None  # nothing follows EOS in the output; the rest of the window is moot
            if i < k - 1:
                logits = self.kv_cache.forward([token], keep=1)[-1]
        return DraftWindow(
            prefix=tuple(int(t) for t in prefix),
            tokens=tuple(tokens),
            proposals=None if sampling.greedy else tuple(proposals),
            draft_s=time.perf_counter() - t0,
        )
