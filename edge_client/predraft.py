"""Pre-drafting on the edge: drafts the next window from a predicted committed sequence while the cloud
verifies the current one.

The draft model has one KV cache, so one hypothesis drafts at a time. A hypothesis with a higher rank (a
deeper exit; the optimistic guess ranks lowest) preempts the running one between tokens; otherwise it waits
in a one-slot queue where a newer hypothesis replaces an older one (a later exit revises an earlier one).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

from edge_client.draft import DraftEngine, DraftGrammar, DraftWindow
from shared.sampling import SamplingParams


@dataclass
class PredraftStats:
    started: dict[str, int] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)

    def count(self, table: dict[str, int], source: str) -> None:
        table[source] = table.get(source, 0) + 1


@dataclass(frozen=True)
class Hypothesis:
    prefix: tuple[int, ...]
    source: str
    rank: float
    guess_next: bool = False


class Predrafter:
    """Runs at most one pre-draft at a time on a worker thread; keeps finished windows by prefix."""

    def __init__(
        self,
        engine: DraftEngine,
        k: int,
        sampling: SamplingParams,
        stats: PredraftStats,
        grammar: DraftGrammar | None = None,
    ) -> None:
        self.engine = engine
        self.grammar = grammar
        self.k = k
        self.sampling = sampling
        self.stats = stats
        self.done: dict[tuple[int, ...], tuple[DraftWindow, str]] = {}
        self.draft_s = 0.0
        self._task: asyncio.Task[None] | None = None
        self._running: Hypothesis | None = None
        self._queued: Hypothesis | None = None
        self._cancel = threading.Event()

    async def request(self, hypothesis: Hypothesis) -> None:
        """Draft after `hypothesis.prefix` (or, with guess_next, after the draft's own guess of the next
        token, i.e. optimistic pre-drafting: the window is kept under prefix + guess)."""
        known = [h.prefix for h in (self._running, self._queued) if h is not None]
        if hypothesis.prefix in self.done or hypothesis.prefix in known:
            return
        if self._running is None:
            self._start(hypothesis)
        elif hypothesis.rank > self._running.rank:
            await self._cancel_running()
            self._start(hypothesis)
        else:
            self._queued = hypothesis

    def _start(self, hypothesis: Hypothesis) -> None:
        if self._task is not None and self._task.done():
            self._task.result()  # surface a failed pre-draft instead of dropping it
        self.stats.count(self.stats.started, hypothesis.source)
        self._running = hypothesis
        self._cancel = threading.Event()
        self._task = asyncio.create_task(self._run(hypothesis, self._cancel))

    async def _run(self, hypothesis: Hypothesis, cancel: threading.Event) -> None:
        k = self.k + 1 if hypothesis.guess_next else self.k
        window = await asyncio.to_thread(
            self.engine.draft, hypothesis.prefix, k, self.sampling, cancel, self.grammar
        )
        if window is not None:
            self.draft_s += window.draft_s
            if hypothesis.guess_next:
                # Keyed randomness makes this the very window a draft after prefix + guess would give.
                window = DraftWindow(
                    prefix=(*hypothesis.prefix, window.tokens[0]),
                    tokens=window.tokens[1:],
                    proposals=window.proposals[1:] if window.proposals is not None else None,
                    draft_s=window.draft_s,
                )
            self.done[window.prefix] = (window, hypothesis.source)
        if self._running is hypothesis:
            self._running = None
            if self._queued is not None and not cancel.is_set():
                queued, self._queued = self._queued, None
                self._start(queued)

    async def _cancel_running(self) -> None:
        task = self._task
        if task is not None and not task.done():
            self._cancel.set()
            await asyncio.shield(task)
        self._running = None

    async def stop(self) -> None:
        """Cancel everything and wait until the draft model is free (awaits are shielded throughout: a
        cancelled awaiter would otherwise cancel the task while its draft thread runs on)."""
        self._queued = None
        while self._task is not None and not self._task.done():
            self._cancel.set()
            await asyncio.shield(self._task)
        self._running = None

    async def settle(self, committed: tuple[int, ...]) -> DraftWindow | None:
        """After a verdict: the pre-drafted window for `committed`, if any (a hit); forget the rest."""
        running = self._running
        if (
            running is not None
            and self._task is not None
            and running.prefix == (committed[:-1] if running.guess_next else committed)
        ):
            self._queued = None
            # The right hypothesis is being drafted: let it finish. Shielded: a caller cancelled here must
            # not cancel the task (its draft thread would run on, unseen by `stop`).
            await asyncio.shield(self._task)
        await self.stop()
        hit = self.done.get(committed)
        self.done.clear()
        if hit is None:
            return None
        self.stats.count(self.stats.hits, hit[1])
        return hit[0]
