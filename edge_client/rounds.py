"""The books of one speculative generation — one implementation for every way the edge decodes.

`SpeculativeDecoder` (in-process and colocated decoding) and `EdgeClient` (over the network) both run the
same round state machine:

    started ──► open_round(window) ──► note_early(early)* ──► close_round(verdict) ──► open_round ...
                                                                      └──► finished

`RoundLedger` owns what a round changes: the committed sequence (prompt + every token the target
confirmed), the round number, the finish state and the metrics of DESIGN.md "Metrics meanings"
(rounds, drafted, accepted, early predictions and early hits, server time). Transport, drafting and
pre-drafting stay with the callers; only `close_round` commits tokens, so nothing else can change the
output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edge_client.draft import DraftWindow
from edge_client.generation_metrics import GenerationMetrics
from shared.protocol import Draft, Early, Started, Verdict


@dataclass(kw_only=True)
class RoundLedger:
    prompt: list[int]
    committed: list[int] = field(default_factory=list)
    round_no: int = 0
    finished: bool = False
    finish_reason: str | None = None
    metrics: GenerationMetrics = field(default_factory=GenerationMetrics)
    window: DraftWindow | None = None  # the window in flight
    last_early: Early | None = None  # the latest early prediction for the window in flight

    def __post_init__(self) -> None:
        if not self.committed:
            self.committed = list(self.prompt)

    @property
    def generated(self) -> list[int]:
        return self.committed[len(self.prompt) :]

    def commit(self, new: list[int]) -> None:
        """Append tokens the target confirmed (subclasses reconcile what they showed before)."""
        self.committed.extend(new)

    def finish(self, reason: str | None) -> None:
        self.finished, self.finish_reason = True, reason

    def on_started(self, started: Started) -> None:
        """The prefill's answer: the target's first token; round numbers start again at 1."""
        self.round_no = 0
        self.metrics.server_busy_s += started.server_ms / 1000.0
        self.commit([started.first_token])
        if started.finished:
            self.finish(started.finish_reason)

    def open_round(self, window: DraftWindow) -> Draft:
        """Number the next round and return its `draft` message; `window` must extend the committed ids."""
        if tuple(window.prefix) != tuple(self.committed):
            raise ValueError("a window must extend the committed sequence")
        self.round_no += 1
        self.window, self.last_early = window, None
        return window.to_message(self.round_no)

    def note_early(self, early: Early) -> bool:
        """Count an early prediction for the round in flight; False for a stale one (ignored)."""
        if self.window is None or early.round != self.round_no:
            return False
        self.metrics.early_predictions += 1
        self.last_early = early
        return True

    def close_round(self, verdict: Verdict) -> list[int]:
        """Commit the verdict of the round in flight and return the tokens it added."""
        window = self.window
        if window is None or verdict.round != self.round_no:
            raise ValueError(f"verdict for round {verdict.round}, but round {self.round_no} is in flight")
        m = self.metrics
        m.rounds += 1
        m.drafted += len(window.tokens)
        m.accepted += verdict.accepted
        m.server_busy_s += verdict.server_ms / 1000.0
        early = self.last_early
        if early is not None:
            m.early_rounds += 1
            m.early_hits += (early.accepted, early.token) == (verdict.accepted, verdict.token)
        new = list(window.tokens[: verdict.accepted])
        if verdict.token is not None:
            new.append(verdict.token)
        self.window = None
        self.commit(new)
        if verdict.finished:
            self.finish(verdict.finish_reason)
        return new

    def abandon_round(self, *, resend: bool = False) -> None:
        """Forget the window in flight (the link dropped, or the server refused it). With `resend` the next
        round reuses its number: the server rolled that round back and expects it again."""
        if resend and self.window is not None:
            self.round_no -= 1
        self.window, self.last_early = None, None
