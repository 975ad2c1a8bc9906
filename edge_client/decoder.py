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
    ) -> GenerationResult:
        """`grammar` ({"json_schema": {...}} | {"regex": ...} | {"lark": ...}) constrains the target; the
        draft applies it too when its engine has a tokenizer."""
        sampling = sampling or SamplingParams()
        metrics = GenerationMetrics()
        t_start = time.perf_counter()
        spec = parse_grammar(grammar)
        extra = {"grammar": spec} if spec is not None else {}
        started = self.verifier.start(prompt_ids, sampling, max_tokens, stop, **extra)
        draft_grammar = self.draft_engine.grammar_for(spec, len(prompt_ids)) if spec is not None else None
        metrics.server_busy_s += started.server_ms / 1000.0
        committed = [*prompt_ids, started.first_token]
        finish_reason = started.finish_reason
        finished = started.finished
        next_window: DraftWindow | None = None
        round_no = 0
        while not finished:
            round_no += 1
            window = (
                next_window
                if next_window is not None
                else self._draft(committed, sampling, metrics, draft_grammar)
            )
            predrafts: dict[tuple[int, ...], DraftWindow] = {}
            last_early: list[Early] = []

            def on_early(
                early: Early, window: DraftWindow = window, predrafts=predrafts, last=last_early
            ) -> None:
                metrics.early_predictions += 1
                last[:] = [early]
                if not self.preempt:
                    return
                hypothesis = (*window.prefix, *window.tokens[: early.accepted], early.token)
                if hypothesis not in predrafts:
                    predrafts[hypothesis] = self._draft(hypothesis, sampling, metrics, draft_grammar)
                    metrics.predraft_started += 1

            t_wait = time.perf_counter()
            verdict = self.verifier.verify(window.to_message(round_no), on_early)
            metrics.verify_wait_s += time.perf_counter() - t_wait
            metrics.server_busy_s += verdict.server_ms / 1000.0
            metrics.rounds += 1
            metrics.drafted += len(window.tokens)
            metrics.accepted += verdict.accepted
            committed.extend(window.tokens[: verdict.accepted])
            if verdict.token is not None:
                committed.append(verdict.token)
            if last_early:
                metrics.early_rounds += 1
                if (last_early[0].accepted, last_early[0].token) == (verdict.accepted, verdict.token):
                    metrics.early_hits += 1
            finished, finish_reason = verdict.finished, verdict.finish_reason
            next_window = predrafts.get(tuple(committed))
            if next_window is not None and not finished:
                metrics.predraft_hits += 1
        metrics.total_s = time.perf_counter() - t_start
        generated = committed[len(prompt_ids) :]
        metrics.generated_tokens = len(generated)
        return GenerationResult(token_ids=generated, finish_reason=finish_reason, metrics=metrics)

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
