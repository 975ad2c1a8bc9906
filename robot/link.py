"""Link watching: a ping at ≥ 5 Hz besides the planner's own traffic, so a dead cloud or a stalled link is
noticed within 0.3 s even between plans (DESIGN.md, "Safety semantics")."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import httpx

Ping = Callable[[], Awaitable[None]]


class HttpHealthPing:
    """GET /health on the cloud server; anything but a 200 within the timeout is a failed ping."""

    def __init__(self, server_url: str, timeout_s: float = 0.25) -> None:
        self.url = (
            server_url.rstrip("/").replace("ws://", "http://").replace("wss://", "https://") + "/health"
        )
        self._client = httpx.AsyncClient(timeout=timeout_s)

    async def __call__(self) -> None:
        response = await self._client.get(self.url)
        if response.status_code != 200:
            raise ConnectionError(f"/health answered {response.status_code}")

    async def aclose(self) -> None:
        await self._client.aclose()


class LinkMonitor:
    """Sends a ping every `interval_s` (overlapping, so one stalled ping does not delay the next) and calls
    `on_change(up, detail)` when no ping has succeeded for `down_after_s`, and again when one succeeds."""

    def __init__(
        self,
        ping: Ping,
        on_change: Callable[..., None],
        *,
        interval_s: float = 0.08,
        timeout_s: float = 0.25,
        down_after_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval_s > 0.2:
            raise ValueError("the link is pinged at 5 Hz or more")
        self.ping = ping
        self.on_change = on_change
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.down_after_s = down_after_s
        self.clock = clock
        self.up = True
        # The first ping also opens the connection: it gets `first_ping_s` before the link counts as lost.
        self.first_ping_s = max(1.0, down_after_s)
        self.last_ok = clock()
        self.last_error = ""
        self.pings = 0
        self.failures = 0

    async def run(self) -> None:
        self.last_ok = self.clock() + self.first_ping_s - self.down_after_s
        pending: set[asyncio.Task] = set()
        next_ping = self.clock()
        try:
            while True:
                now = self.clock()
                if now >= next_ping:
                    task = asyncio.create_task(self._one())
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    next_ping = now + self.interval_s
                silent = self.clock() - self.last_ok
                if self.up and silent > self.down_after_s:
                    self.up = False
                    self.on_change(False, silent_s=round(silent, 3), error=self.last_error)
                await asyncio.sleep(0.02)
        finally:
            for task in pending:
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*pending, return_exceptions=True)

    async def _one(self) -> None:
        self.pings += 1
        try:
            await asyncio.wait_for(self.ping(), self.timeout_s)
        except Exception as exc:  # any failure is a failed ping; the reason is kept for the log
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"[:200]
            return
        self.last_ok = self.clock()
        if not self.up:
            self.up = True
            self.on_change(True)
