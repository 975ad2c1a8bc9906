"""The engine core's loop, in the style of vLLM's: schedule → execute → update, on one thread.

Work arrives as jobs. A *batchable* job is one session's next forward — a verification window
(`TargetSession.plan_round`) or an autoregressive step (`AutoregressiveGeneration.plan_step`); a *call* is
anything else that must run on the model's thread (a prefill, a resume's re-prefill, loading). Each step:

* schedule: the oldest job decides. A call runs alone; otherwise the batchable jobs are taken oldest first
  while they fit the step's token budget (the first always does), calls stay queued in their place.
  Jobs whose caller went away are dropped here, between steps.
* execute: every scheduled job plans its forward (checks and RNG draws, no mutation), then one packed
  forward over all their caches (`EarlyExitTarget.forward_batch`) fires each session's exits mid-forward.
* update: each job finishes from its logits (verification, commit) — the only place session state moves.

A failed forward rolls every job of the step back (`abort`: caches and RNG to the committed state); when the
step held several, each is run again alone, so one bad session cannot fail the others and the retries are
exact (the same uniforms, caches rebuilt from committed tokens).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from cloud_server.engine.autoregressive import AutoregressiveGeneration
from cloud_server.engine.batched import EXACT_BATCH_ROWS, Segment
from cloud_server.engine.early_exit import EarlyExitTarget
from cloud_server.engine.target_session import EarlyCallback, TargetSession, VerifyRound, round_failed
from shared.protocol import Draft, Verdict

log = logging.getLogger("eespec.engine.scheduler")


class BatchWork(Protocol):
    """One session's share of a step."""

    target: EarlyExitTarget
    tokens: int  # the step budget it uses (new tokens it feeds)

    def plan(self) -> Segment: ...
    def finish(self, logits: torch.Tensor, forward_s: float, share_s: float, load: float) -> Any: ...
    def abort(self, exc: BaseException) -> BaseException: ...


@dataclass
class _Job:
    future: Future
    enqueued: float
    work: BatchWork | None = None
    call: Callable[[], Any] | None = None
    tokens: int = 0


@dataclass(frozen=True)
class StepStats:
    sessions: int
    tokens: int
    forward_s: float
    queue_wait_s: float


@dataclass
class SchedulerStats:
    steps: int = 0
    batched_sessions: int = 0
    max_batch: int = 0
    recent: deque[StepStats] = field(default_factory=lambda: deque(maxlen=256))


class Scheduler:
    """Owns the model thread: jobs go in with `submit_call` / `submit_work`, results come back as futures."""

    def __init__(
        self,
        *,
        token_budget: int = EXACT_BATCH_ROWS,
        max_batch: int = 32,
        on_busy: Callable[[float], None] | None = None,
    ) -> None:
        if token_budget < 1 or max_batch < 1:
            raise ValueError("token_budget and max_batch must be at least 1")
        self.token_budget = token_budget
        self.max_batch = max_batch
        self.on_busy = on_busy
        self.busy_s = 0.0
        self.stats = SchedulerStats()
        self._queue: deque[_Job] = deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._delay_s = 0.0  # EWMA of how long scheduled jobs waited in the queue (statistics)
        self._load = 0.0
        # Started by the first job (as an executor starts its worker): an unused state holds no thread.
        self._thread = threading.Thread(target=self._loop, name="eespec-inference", daemon=True)

    # -- front ---------------------------------------------------------------------------------------

    def submit_call(self, fn: Callable[[], Any]) -> Future:
        return self._put(_Job(Future(), time.perf_counter(), call=fn))

    def submit_work(self, work: BatchWork) -> Future:
        return self._put(_Job(Future(), time.perf_counter(), work=work, tokens=max(1, work.tokens)))

    @property
    def queue_depth(self) -> int:
        with self._cv:
            return len(self._queue)

    @property
    def queue_delay_s(self) -> float:
        """How long the oldest queued job has waited (0 when none waits): what admission bounds."""
        with self._cv:
            oldest = next((job.enqueued for job in self._queue if not job.future.cancelled()), None)
        return 0.0 if oldest is None else time.perf_counter() - oldest

    @property
    def load(self) -> float:
        """Queue pressure at the last step: tokens waiting (scheduled included) / token budget."""
        return self._load

    def shutdown(self) -> None:
        with self._cv:
            self._stopping = True
            for job in self._queue:
                job.future.cancel()
            self._queue.clear()
            self._cv.notify_all()

    def _put(self, job: _Job) -> Future:
        with self._cv:
            if self._stopping:
                raise RuntimeError("the inference worker is shut down")
            self._queue.append(job)
            if not self._thread.is_alive() and self._thread.ident is None:
                self._thread.start()
            self._cv.notify()
        return job.future

    # -- loop ----------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    return
                call, batch, load = self._schedule()
            now = time.perf_counter()
            jobs = [call] if call is not None else batch
            for job in jobs:
                self._delay_s = 0.8 * self._delay_s + 0.2 * (now - job.enqueued)
            self._load = load
            t0 = time.perf_counter()
            try:
                if call is not None:
                    self._run_call(call)
                elif batch:
                    self._run_batch(batch, load)
            finally:
                seconds = time.perf_counter() - t0
                self.busy_s += seconds
                if self.on_busy is not None:
                    self.on_busy(seconds)

    def _schedule(self) -> tuple[_Job | None, list[_Job], float]:
        """Under the lock: the next call, or the next batch and the queue pressure it saw."""
        # Drop what nobody waits for any more; a job is claimed (`set_running_or_notify_cancel`) only when
        # scheduled, and one cancelled in between is dropped there (a claimed future cannot be cancelled).
        live: deque[_Job] = deque()
        for job in self._queue:
            if not job.future.cancelled():
                live.append(job)
        self._queue = live
        if not live:
            return None, [], 0.0
        if live[0].call is not None:
            job = live.popleft()
            return (job if job.future.set_running_or_notify_cancel() else None), [], 0.0
        waiting = sum(job.tokens for job in live if job.work is not None)
        batch: list[_Job] = []
        used = 0
        target = live[0].work.target  # type: ignore[union-attr]
        rest: deque[_Job] = deque()
        for job in live:
            fits = (
                job.work is not None
                and job.work.target is target
                and len(batch) < self.max_batch
                and (not batch or used + job.tokens <= self.token_budget)
            )
            if fits:
                batch.append(job)
                used += job.tokens
            else:
                rest.append(job)
        self._queue = rest
        batch = [job for job in batch if job.future.set_running_or_notify_cancel()]
        return None, batch, waiting / self.token_budget

    def _run_call(self, job: _Job) -> None:
        try:
            result = job.call()  # type: ignore[misc]
        except BaseException as exc:  # handed to the caller, like a ThreadPoolExecutor would
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)

    def _run_batch(self, batch: Sequence[_Job], load: float) -> None:
        planned: list[tuple[_Job, Segment]] = []
        for job in batch:
            try:
                planned.append((job, job.work.plan()))  # type: ignore[union-attr]
            except BaseException as exc:
                job.future.set_exception(exc)
        if not planned:
            return
        target = planned[0][0].work.target  # type: ignore[union-attr]
        t0 = time.perf_counter()
        try:
            rows = target.forward_batch([segment for _, segment in planned])
        except Exception as exc:
            for job, _ in planned:
                err = job.work.abort(exc)  # type: ignore[union-attr]
                if len(planned) == 1:
                    job.future.set_exception(err)
            if len(planned) > 1:
                log.warning("a batched step of %d sessions failed; running each alone", len(planned))
                for job, _ in planned:
                    self._run_batch([job], load)
            return
        forward_s = time.perf_counter() - t0
        tokens = sum(len(segment.new_ids) for _, segment in planned)
        self.stats.steps += 1
        self.stats.batched_sessions += len(planned)
        self.stats.max_batch = max(self.stats.max_batch, len(planned))
        self.stats.recent.append(StepStats(len(planned), tokens, forward_s, self._delay_s))
        for (job, segment), logits in zip(planned, rows, strict=True):
            share = forward_s * len(segment.new_ids) / tokens
            try:
                job.future.set_result(job.work.finish(logits, forward_s, share, load))  # type: ignore[union-attr]
            except BaseException as exc:
                job.future.set_exception(exc)


@dataclass
class VerifyWork:
    """A verification window of one session (`TargetSession.plan_round` → `finish_round`)."""

    session: TargetSession
    draft: Draft
    on_early: EarlyCallback | None
    exits: Sequence[int] | None
    plan_: VerifyRound | None = None

    @property
    def target(self):
        return self.session.early_exit

    @property
    def tokens(self) -> int:
        return len(self.draft.tokens) + 1

    def plan(self) -> Segment:
        self.plan_ = self.session.plan_round(self.draft, self.on_early, self.exits)
        return self.plan_.segment

    def finish(self, logits: torch.Tensor, forward_s: float, share_s: float, load: float) -> Verdict:
        verdict = self.session.finish_round(self.plan_, logits, forward_s * 1000.0)  # type: ignore[arg-type]
        return verdict.model_copy(update={"server_load": round(load, 3)})

    def abort(self, exc: BaseException) -> BaseException:
        self.session.abort_round(self.plan_)  # type: ignore[arg-type]
        err = round_failed(self.draft.round)
        err.__cause__ = exc
        return err


@dataclass
class StepWork:
    """An autoregressive step of an OpenAI-route generation; `then` runs on the token (detokenisation)."""

    generation: AutoregressiveGeneration
    then: Callable[[int], object] | None

    @property
    def target(self):
        return self.generation.early_exit

    tokens: int = 1

    def plan(self) -> Segment:
        return self.generation.plan_step()

    def finish(self, logits: torch.Tensor, forward_s: float, share_s: float, load: float):
        token = self.generation.finish_step(logits, share_s)
        return token if self.then is None else self.then(token)

    def abort(self, exc: BaseException) -> BaseException:
        self.generation.abort_step()
        return exc
