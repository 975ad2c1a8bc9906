"""The daemon's live event feed for the dashboard: bounded, thread-safe fan-out that never blocks the daemon.

The daemon (its asyncio loop) publishes small JSON-able events; every subscriber (one browser's websocket,
in the status server's thread) gets its own bounded queue that drops its oldest events when the browser
reads too slowly, so a slow browser costs the control loop one `deque.append` per event, never a wait.
A short history of plan events lets a browser that joins mid-task show the planner's recent output.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from typing import Any

HISTORY_EVENTS = 200  # plan/safety events kept for late joiners
SUBSCRIBER_QUEUE = 256  # events queued per browser before the oldest are dropped


class Subscription:
    """One consumer's bounded queue; `wait()` runs on the consumer's own event loop."""

    def __init__(self, feed: EventFeed, loop: asyncio.AbstractEventLoop, maxlen: int) -> None:
        self.feed = feed
        self.queue: deque[dict[str, Any]] = deque(maxlen=maxlen)
        self.dropped = 0
        self._loop = loop
        self._ready = asyncio.Event()
        self._signalled = False  # at most one cross-thread wake-up per drain

    def put(self, event: dict[str, Any]) -> None:
        """Called under the feed's lock, from any thread."""
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1
        self.queue.append(event)
        if not self._signalled:
            self._signalled = True
            # RuntimeError: the consumer's loop is gone; it unsubscribes on its way out.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._ready.set)

    async def next_batch(self) -> list[dict[str, Any]]:
        await self._ready.wait()
        with self.feed.lock:
            self._ready.clear()
            self._signalled = False
            batch = list(self.queue)
            self.queue.clear()
        return batch

    def close(self) -> None:
        self.feed.unsubscribe(self)


class EventFeed:
    def __init__(self, history: int = HISTORY_EVENTS) -> None:
        self.lock = threading.Lock()
        self.history: deque[dict[str, Any]] = deque(maxlen=history)
        self.subscribers: list[Subscription] = []
        self.seq = 0

    def publish(self, kind: str, keep: bool = False, **data: Any) -> None:
        """Fan `{"seq", "kind", **data}` out to every subscriber; `keep` also records it for late joiners."""
        with self.lock:
            self.seq += 1
            event = {"seq": self.seq, "kind": kind, **data}
            if keep:
                self.history.append(event)
            for sub in self.subscribers:
                sub.put(event)

    def subscribe(self, maxlen: int = SUBSCRIBER_QUEUE) -> tuple[Subscription, list[dict[str, Any]]]:
        """A new subscription on the running loop, and the kept history up to the moment it began."""
        sub = Subscription(self, asyncio.get_running_loop(), maxlen)
        with self.lock:
            self.subscribers.append(sub)
            return sub, list(self.history)

    def unsubscribe(self, sub: Subscription) -> None:
        with self.lock:
            if sub in self.subscribers:
                self.subscribers.remove(sub)


class PlanFigures:
    """The planner's running figures over the episode, as the dashboard shows them."""

    def __init__(self) -> None:
        self.plans = 0
        self.tokens = 0
        self.plan_s = 0.0
        self.accepted_lens: list[float] = []
        self.predraft_hits = 0
        self.rounds = 0  # rounds reported by a backend that streams them
        self.round_predraft_hits = 0
        self.last_plan_ms: float | None = None

    def add_plan(self, ms: float, tokens: int, mean_accepted_len: float | None, predraft_hits: int | None):
        self.plans += 1
        self.tokens += tokens
        self.plan_s += ms / 1000.0
        self.last_plan_ms = round(ms, 2)
        if mean_accepted_len is not None:
            self.accepted_lens.append(mean_accepted_len)
        self.predraft_hits += predraft_hits or 0

    def add_round(self, predraft_hit: bool | None) -> None:
        self.rounds += 1
        self.round_predraft_hits += bool(predraft_hit)

    def snapshot(self) -> dict[str, Any]:
        return {
            "plans": self.plans,
            "tokens": self.tokens,
            "tokens_per_s": round(self.tokens / self.plan_s, 2) if self.plan_s > 0 else None,
            "accepted_per_round": (
                round(sum(self.accepted_lens) / len(self.accepted_lens), 3) if self.accepted_lens else None
            ),
            "predraft_hits": self.predraft_hits,
            "rounds": self.rounds,
            "predraft_hit_rate": round(self.round_predraft_hits / self.rounds, 3) if self.rounds else None,
            "plan_ms_mean": round(1000.0 * self.plan_s / self.plans, 2) if self.plans else None,
            "last_plan_ms": self.last_plan_ms,
        }
