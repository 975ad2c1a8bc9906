"""The inference worker: the event loop's door to the engine core's scheduler (`scheduler.Scheduler`).

One thread owns the model, so the event loop never blocks on a forward pass. Verification windows and
autoregressive steps of concurrent sessions go through `verify` / `step` and are batched into one forward
per scheduler step; everything else (prefills, resumes, loading) goes through `run` and runs alone between
steps. A chunked prefill goes through `run_stepwise`: each chunk is its own call, queued behind the work
that arrived meanwhile, so one long prompt delays another session's round by one chunk, not by the prompt.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import ParamSpec, TypeVar

from cloud_server.engine.autoregressive import AutoregressiveGeneration
from cloud_server.engine.batched import EXACT_BATCH_ROWS
from cloud_server.engine.scheduler import Scheduler, StepWork, VerifyWork
from cloud_server.engine.stepwise import Stepwise, advance
from cloud_server.engine.target_session import EarlyCallback, TargetSession
from shared.protocol import Draft, Verdict

P = ParamSpec("P")
T = TypeVar("T")


class InferenceWorker:
    def __init__(
        self,
        on_busy: Callable[[float], None] | None = None,
        *,
        token_budget: int = EXACT_BATCH_ROWS,
        max_batch: int = 32,
    ) -> None:
        self._scheduler = Scheduler(token_budget=token_budget, max_batch=max_batch, on_busy=on_busy)
        self._queued = 0

    @property
    def on_busy(self) -> Callable[[float], None] | None:
        return self._scheduler.on_busy

    @on_busy.setter
    def on_busy(self, fn: Callable[[float], None] | None) -> None:
        # `on_busy` hears each step's seconds (the server exports them as eespec_busy_seconds_total).
        self._scheduler.on_busy = fn

    @property
    def busy_s(self) -> float:
        """Seconds of model time: prefills, batched verification steps with exits, autoregressive steps."""
        return self._scheduler.busy_s

    @property
    def queue_depth(self) -> int:
        """Jobs submitted and not finished (the ones running included)."""
        return self._queued

    @property
    def scheduler(self) -> Scheduler:
        return self._scheduler

    @property
    def queue_delay_s(self) -> float:
        return self._scheduler.queue_delay_s

    @property
    def load(self) -> float:
        return self._scheduler.load

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn` on the model's thread, alone between scheduler steps.

        If the caller is cancelled (its client went away) while the job still waits in the queue, the job
        is dropped and never runs; if it is already running, the cancellation waits for it to end, so that
        whoever cleans up after the caller never touches a session the worker is still using.
        """
        return await self._await(self._scheduler.submit_call(functools.partial(fn, *args, **kwargs)))

    async def run_stepwise(self, steps: Stepwise[T]) -> T:
        """Run a stepwise job (`engine.stepwise`) on the model's thread, one scheduler call per piece.

        If the caller is cancelled or a piece fails, the generator is closed between pieces (never while the
        worker runs it: `run` waits for a running piece), so its cleanup frees what it held.
        """
        try:
            while True:
                done, value = await self.run(advance, steps)
                if done:
                    return value  # type: ignore[return-value]
        finally:
            steps.close()

    async def verify(
        self,
        session: TargetSession,
        draft: Draft,
        on_early: EarlyCallback | None = None,
        exits: Sequence[int] | None = None,
    ) -> Verdict:
        """`session.verify(draft, ...)`, batched with the other sessions' pending work."""
        work = VerifyWork(session, draft, on_early, exits)
        return await self._await(self._scheduler.submit_work(work))

    async def step(self, generation: AutoregressiveGeneration, then: Callable[[int], T] | None = None):
        """`generation.step()`, batched with the other sessions' pending work; with `then`, its result on
        the token (run on the model's thread right after the step, e.g. detokenisation)."""
        return await self._await(self._scheduler.submit_work(StepWork(generation, then)))

    async def _await(self, future: Future):
        self._queued += 1
        try:
            return await asyncio.shield(asyncio.wrap_future(future))
        except asyncio.CancelledError:
            if not future.cancel():  # running (or done): let it finish first
                await asyncio.wait([asyncio.wrap_future(future)])
            raise
        finally:
            self._queued -= 1

    def shutdown(self) -> None:
        self._scheduler.shutdown()
