"""The inference worker: one thread owns the model, so the event loop never blocks on a forward pass."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class InferenceWorker:
    def __init__(self, on_busy: Callable[[float], None] | None = None) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eespec-inference")
        self._queued = 0
        # Seconds spent running jobs (model time: prefill, verification with exits, autoregressive steps);
        # `on_busy` hears each job's seconds (the server exports them as eespec_busy_seconds_total).
        self.busy_s = 0.0
        self.on_busy = on_busy

    @property
    def queue_depth(self) -> int:
        """Jobs submitted and not finished (the one running included)."""
        return self._queued

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn` on the worker thread.

        If the caller is cancelled (its client went away) while the job still waits in the queue, the job
        is dropped and never runs; if it is already running, the cancellation waits for it to end, so that
        whoever cleans up after the caller never touches a session the worker is still using.
        """
        self._queued += 1
        future = self._executor.submit(self._timed, fn, *args, **kwargs)
        try:
            return await asyncio.shield(asyncio.wrap_future(future))
        except asyncio.CancelledError:
            if not future.cancel():  # running (or done): let it finish first
                await asyncio.wait([asyncio.wrap_future(future)])
            raise
        finally:
            self._queued -= 1

    def _timed(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            seconds = time.perf_counter() - t0
            self.busy_s += seconds
            if self.on_busy is not None:
                self.on_busy(seconds)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
