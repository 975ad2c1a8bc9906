"""The speculative decoding loop on the edge, over any verifier (in-process target or remote server).

Preemptive drafting: on an `early` prediction the decoder drafts the next window from the predicted
committed sequence; if the verdict confirms the prediction, that window is sent at once, otherwise it is
discarded (the draft cache rolls back on the next `draft`). Early predictions never change the output:
windows are pure functions of their prefix, and only the verdict commits tokens.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from edge_client.draft import DraftEngine, DraftGrammar, DraftWindow
from edge_client.generation_metrics import GenerationMetrics
from edge_client.rounds import RoundLedger
from shared.grammar import GrammarSpec, parse_grammar
from shared.protocol import Draft, Early, Started, Verdict
from shared.sampling import SamplingParams


class Verifier(Protocol):
    """What the decoder needs from the target side; `TargetSession` satisfies it in-process."""

    def start(
        self,
        prompt_ids: Sequence[int],
        sampling: SamplingParams,
        max_tokens: int,
        stop: Sequence[str] | None = None,
        grammar: GrammarSpec | None = None,
    ) -> Started: ...

    def verify(self, draft: Draft, on_early: Callable[[Early], None] | None = None) -> Verdict: ...


@dataclass
class GenerationResult:
    token_ids: list[int]
    finish_reason: str | None
    metrics: GenerationMetrics
    extra: dict[str, object] = field(default_factory=dict)


class SpeculativeDecoder:
    def __init__(
        self, draft: DraftEngine, verifier: Verifier, *, window: int = 4, preempt: bool = True
    ) -> None:
        if window < 1:
            raise ValueError("window must be ≥ 1")
        self.draft_engine = draft
        self.verifier = verifier
        self.window = window
        self.preempt = preempt

    def generate(
        self,
        prompt_ids: Sequence[int],
        *,
        max_tokens: int,
        sampling: SamplingParams | None = None,
        stop: Sequence[str] | None = None,
        grammar: GrammarSpec | Mapping[str, Any] | None = None,
        images: Sequence[Any] = (),
    ) -> GenerationResult:
        """`grammar` ({"json_schema": {...}} | {"regex": ...} | {"lark": ...}) constrains the target; the
        draft applies it too when its engine has a tokenizer."""
        sampling = sampling or SamplingParams()
        books = RoundLedger(prompt=list(prompt_ids))
        metrics = books.metrics
        t_start = time.perf_counter()
        spec = parse_grammar(grammar)
        extra: dict[str, Any] = {"grammar": spec} if spec is not None else {}
        if images:  # decoded images, one per image of the prompt; both sides prefill them once
            extra["images"] = list(images)
        self.draft_engine.set_images(images, prompt_ids)
        books.on_started(self.verifier.start(prompt_ids, sampling, max_tokens, stop, **extra))
        draft_grammar = self.draft_engine.grammar_for(spec, len(prompt_ids)) if spec is not None else None
        next_window: DraftWindow | None = None
        while not books.finished:
            window = next_window or self._draft(books.committed, sampling, metrics, draft_grammar)
            message = books.open_round(window)
            predrafts: dict[tuple[int, ...], DraftWindow] = {}

            def on_early(early: Early, window: DraftWindow = window, predrafts=predrafts) -> None:
                if not books.note_early(early) or not self.preempt:
                    return
                hypothesis = (*window.prefix, *window.tokens[: early.accepted], early.token)
                if hypothesis not in predrafts:
                    predrafts[hypothesis] = self._draft(hypothesis, sampling, metrics, draft_grammar)
                    metrics.predraft_started += 1

            t_wait = time.perf_counter()
            verdict = self.verifier.verify(message, on_early)
            metrics.verify_wait_s += time.perf_counter() - t_wait
            books.close_round(verdict)
            next_window = predrafts.get(tuple(books.committed))
            if next_window is not None and not books.finished:
                metrics.predraft_hits += 1
        metrics.total_s = time.perf_counter() - t_start
        metrics.generated_tokens = len(books.generated)
        return GenerationResult(token_ids=books.generated, finish_reason=books.finish_reason, metrics=metrics)

    def _draft(
        self,
        prefix: Sequence[int],
        sampling: SamplingParams,
        metrics: GenerationMetrics,
        grammar: DraftGrammar | None = None,
    ) -> DraftWindow:
        window = self.draft_engine.draft(prefix, self.window, sampling, grammar=grammar)
        assert window is not None  # only a cancelled draft is None
        metrics.draft_s += window.draft_s
        return window
