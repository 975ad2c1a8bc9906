"""The inference worker: one thread owns the model, so the event loop never blocks on a forward pass."""

from __future__ import annotations

import asyncio
import functools
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
        loop = asyncio.get_running_loop()
        self._queued += 1
        try:
            return await loop.run_in_executor(
                self._executor, functools.partial(self._timed, fn, *args, **kwargs)
            )
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
