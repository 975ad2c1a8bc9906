"""The control-loop daemon (DESIGN.md, "Daemon loop"): sense → perceive → plan → validate → act.

One asyncio loop runs four activities: the control tick (≥ 20 Hz: read the state, step the executor, pass
its command through the safety gate, send Move every tick while a command is in force, log); the camera
and perception (5 Hz); the planner, asynchronous, refilling the action queue before it runs dry; and the
link monitor. The status server (another thread) reads `status()` and latches the e-stop through the gate.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from robot.actions import Done, StandDown, StandUp
from robot.episode_log import EpisodeLog, jpeg_bytes
from robot.executor import Executor, QueuedAction, nominal_duration
from robot.interface import CameraFrame, RobotInterface, RobotState
from robot.link import LinkMonitor, Ping
from robot.metrics import RobotMetrics
from robot.perception import Perception, SceneDescription
from robot.planner import Observation, Planner, PlanStats
from robot.safety import ZERO, Decision, LinkPolicy, SafetyGate
from robot.tasks import Task, holds

PLANNER_ERROR_BACKOFF_S = 0.5


@dataclass
class DaemonConfig:
    tick_hz: float = 25.0
    camera_hz: float = 5.0
    duration_s: float | None = None  # cut the episode short of the task's time limit
    plan_max_age_s: float = 5.0  # a plan (or queued action) older than this is stale and dropped
    refill_s: float = 0.4  # ask for the next plan when less than this much is queued (plus the last latency)
    link_policy: LinkPolicy = "stop"
    damp_on_estop: bool = False
    stand_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.tick_hz < 20:
            raise ValueError("the control tick runs at 20 Hz or more")
        if not 1 <= self.camera_hz <= 30:
            raise ValueError("the camera runs at 1 to 30 Hz")


@dataclass(frozen=True)
class EpisodeResult:
    success: bool
    time_to_goal_s: float | None
    reason: str  # success | done | time_limit | duration | collisions | stopped
    summary: dict[str, Any]


class RobotDaemon:
    def __init__(
        self,
        robot: RobotInterface,
        task: Task,
        planner: Planner,
        perception: Perception | None,
        *,
        config: DaemonConfig | None = None,
        log: EpisodeLog | None = None,
        fallback_planner: Planner | None = None,
        link_ping: Ping | None = None,
        unverified_allowed: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.robot = robot
        self.task = task
        self.planner = planner
        self.fallback_planner = fallback_planner
        self.perception = perception
        self.config = config or DaemonConfig()
        self.log = log or EpisodeLog(None)
        self.clock = clock
        self.metrics = RobotMetrics()
        self.tick_s = 1.0 / self.config.tick_hz
        self.gate = SafetyGate(self._safety_event, link_policy=self.config.link_policy, tick_s=self.tick_s)
        # `--planner edge-only`: the draft's own plans drive, unverified, under halved limits.
        self.gate.unverified_allowed = unverified_allowed
        self.executor = Executor(self._safety_event)
        self.link_ping = link_ping
        self.link_monitor: LinkMonitor | None = None
        self.t0 = clock()
        self.state: RobotState | None = None
        self.scene: SceneDescription | None = None
        self.frame: CameraFrame | None = None
        self.last_decision = Decision(ZERO, "none", "ok", False)
        self.last_plan_ms: float | None = None
        self.plan_ms: list[float] = []
        self.success = False
        self.time_to_goal_s: float | None = None
        self.end_reason: str | None = None
        self._ready = False
        self._soft_stopped = False
        self._standing_task: asyncio.Task | None = None
        self._plan_task: asyncio.Task | None = None
        self._fallback_task: asyncio.Task | None = None
        self._plan_id = 0
        self._plan_not_before = 0.0
        self._plan_obs_t: dict[int, float] = {}
        self._current_plan_t: float | None = None
        self._done_at: float | None = None
        self._stop_requested = False
        self._sent_nonzero = True  # so the first zero tick sends stop_move
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._status: dict[str, Any] = {}
        self._status_lock = threading.Lock()

    # --- time and events -----------------------------------------------------------------------------

    def now(self) -> float:
        return self.clock() - self.t0

    def _safety_event(self, name: str, detail: dict) -> None:
        self.log.event(self.now(), name, detail)
        self.metrics.safety_events.labels(name=name).inc()

    # --- controls from other threads -----------------------------------------------------------------

    def estop(self, reason: str = "http") -> None:
        self.gate.latch(reason)

    def estop_reset(self) -> bool:
        return self.gate.reset()

    def request_stop(self) -> None:
        self._stop_requested = True

    def status(self) -> dict[str, Any]:
        with self._status_lock:
            return dict(self._status)

    def camera_jpeg(self) -> bytes | None:
        frame = self.frame
        return jpeg_bytes(frame.rgb) if frame is not None else None

    # --- the episode ---------------------------------------------------------------------------------

    async def run(self) -> EpisodeResult:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.t0 = self.clock()
        self.log.write_task(self.task.to_file())
        self.log.event(0.0, "episode_start", {"task": self.task.name, "planner": self.planner.mode})
        if self.gate.unverified_allowed:
            self._safety_event("edge_only_planner", {"limits": "halved"})
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            self._loop.add_signal_handler(signal.SIGUSR1, lambda: self.gate.latch("signal"))
        background = [asyncio.create_task(self._camera_loop()), asyncio.create_task(self._planner_loop())]
        if self.link_ping is not None:
            self.link_monitor = LinkMonitor(self.link_ping, self._on_link)
            background.append(asyncio.create_task(self.link_monitor.run()))
        self._standing_task = asyncio.create_task(self._stand())
        try:
            await self._control_loop()
        finally:
            for task in [*background, self._standing_task, self._plan_task, self._fallback_task]:
                if task is not None:
                    task.cancel()
            for task in background:
                with contextlib.suppress(BaseException):
                    await task
            with contextlib.suppress(Exception):
                self.robot.stop_move()
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                self._loop.remove_signal_handler(signal.SIGUSR1)
        summary = self._summary()
        self.log.event(self.now(), "episode_end", {"reason": self.end_reason, "success": self.success})
        self.log.write_summary(summary)
        self.log.close()
        return EpisodeResult(self.success, self.time_to_goal_s, self.end_reason or "stopped", summary)

    def _summary(self) -> dict[str, Any]:
        events = [r for r in self.log.records if r["kind"] == "event" and r["name"] not in _NOT_SAFETY]
        return {
            "task": self.task.name,
            "planner": self.planner.mode,
            "success": self.success,
            "time_to_goal_s": None if self.time_to_goal_s is None else round(self.time_to_goal_s, 3),
            "collisions": int(getattr(self.robot, "collisions", 0)),
            "plans": len(self.plan_ms),
            "plan_ms_median": round(statistics.median(self.plan_ms), 2) if self.plan_ms else None,
            "safety_events": len(events),
        }

    async def _control_loop(self) -> None:
        next_t = self.clock()
        while self.end_reason is None:
            self._tick()
            next_t += self.tick_s
            delay = next_t - self.clock()
            if delay < -self.tick_s:  # fell behind (a loaded machine): do not burst to catch up
                next_t = self.clock()
                delay = 0.0
            await asyncio.sleep(max(0.0, delay))

    def _tick(self) -> None:
        now = self.now()
        state = self.robot.state()
        self.state = state
        if state.error_code and not self.gate.estopped:
            self.gate.latch("fault", error_code=state.error_code)
        if self.gate.estopped and not self._soft_stopped:
            self._soft_stop()
        elif not self.gate.estopped and self._soft_stopped:
            self._soft_stopped = False
            self._standing_task = asyncio.create_task(self._stand(recover=True))
        self._handle_requests()
        proposal = None
        if self._ready and not self.gate.estopped and self._done_at is None:
            proposal = self.executor.step(now, state)
        decision = self.gate.decide(now, proposal)
        self.last_decision = decision
        self._act(decision)
        link = "up" if self.gate.link_up else "down"
        self.log.tick(
            now, state.pose, decision.twist, decision.source, decision.verified, decision.safety, link
        )
        self._check_end(now, state)
        self._publish(now, state, decision, proposal is not None)

    def _act(self, decision: Decision) -> None:
        if decision.twist != ZERO:
            self.robot.move(*decision.twist)  # re-sent every tick while a command is in force
            self._sent_nonzero = True
        elif self._sent_nonzero:
            self.robot.stop_move()
            self._sent_nonzero = False

    def _soft_stop(self) -> None:
        """E-stop: stop_move, then stand_down (damp when configured); drop everything queued."""
        self._soft_stopped = True
        self._ready = False
        dropped = self.executor.clear()
        self.robot.stop_move()
        self._sent_nonzero = False
        if self.config.damp_on_estop:
            self.robot.damp()
        else:
            self.robot.stand_down()
        self.log.event(self.now(), "soft_stop", {"dropped": dropped, "damp": self.config.damp_on_estop})

    def _handle_requests(self) -> None:
        while self.executor.requests:
            req = self.executor.requests.popleft()
            if isinstance(req, Done):
                self._done_at = self.now()
                self.executor.clear()
                self.log.event(self._done_at, "planner_done", {})
            elif isinstance(req, StandDown):
                self._ready = False
                self.executor.clear()
                self.robot.stop_move()
                self.robot.stand_down()
            elif isinstance(req, StandUp) and not self._ready:
                self._standing_task = asyncio.create_task(self._stand())

    def _check_end(self, now: float, state: RobotState) -> None:
        limit = self.task.success.time_limit_s
        stopped = state.stopped() and self.last_decision.twist == ZERO
        if not self.success and stopped and holds(self.task.success.condition, self.task, *state.pose):
            max_c = self.task.success.max_collisions
            if max_c is None or getattr(self.robot, "collisions", 0) <= max_c:
                self.success, self.time_to_goal_s = True, now
                self.log.event(now, "success", {"time_to_goal_s": round(now, 3)})
                self.end_reason = "success"
                return
        max_c = self.task.success.max_collisions
        if max_c is not None and getattr(self.robot, "collisions", 0) > max_c:
            self.end_reason = "collisions"
        elif self._done_at is not None and (state.stopped() or now - self._done_at > 1.0):
            self.end_reason = "done"
        elif now >= limit:
            self.end_reason = "time_limit"
        elif self.config.duration_s is not None and now >= self.config.duration_s:
            self.end_reason = "duration"
        elif self._stop_requested:
            self.end_reason = "stopped"

    def _publish(self, now: float, state: RobotState, decision: Decision, in_force: bool) -> None:
        m = self.metrics
        m.ticks.inc()
        for axis, c, v in zip(("vx", "vy", "vyaw"), decision.twist, state.velocity, strict=True):
            m.command.labels(axis=axis).set(c)
            m.velocity.labels(axis=axis).set(v)
        m.queue_len.set(len(self.executor))
        m.estop.set(1 if self.gate.estopped else 0)
        m.link_up.set(1 if self.gate.link_up else 0)
        m.collisions.set(getattr(self.robot, "collisions", 0))
        run = self.executor.current
        age = None
        if in_force and run is not None:
            age = round(now - self._plan_obs_t.get(run.item.plan_id, now), 3)
        status = {
            "t": round(now, 3),
            "posture": state.posture,
            "pose": [round(v, 4) for v in state.pose],
            "velocity": [round(v, 4) for v in state.velocity],
            "command": [round(v, 4) for v in decision.twist],
            "command_age_s": age,
            "queue_len": len(self.executor),
            "estop": self.gate.estopped,
            "link": "up" if self.gate.link_up else "down",
            "safety": decision.safety,
            "planner": {"mode": self.planner.mode, "last_plan_ms": self.last_plan_ms},
            "task": {"name": self.task.name, "elapsed_s": round(now, 3), "success": self.success},
        }
        with self._status_lock:
            self._status = status

    # --- standing ------------------------------------------------------------------------------------

    async def _stand(self, recover: bool = False) -> None:
        """Stand up from whatever posture the robot is in (waiting out a transition), then balance_stand."""
        self._ready = False
        deadline = self.clock() + self.config.stand_timeout_s
        while (state := self.robot.state()).posture != "standing":
            if state.error_code or state.posture == "fallen":
                if recover:
                    self.robot.recovery_stand()
            elif state.posture in ("lying", "damped"):
                self.robot.stand_up()
            if self.clock() > deadline:
                self.gate.latch("fault", detail="the robot did not stand up")
                return
            await asyncio.sleep(0.02)
        self.robot.balance_stand()
        self.executor.awaiting_readiness = True  # Moves are ignored for a while; confirmed from the state
        self._ready = True
        self.log.event(self.now(), "standing", {})

    # --- perception ----------------------------------------------------------------------------------

    async def _camera_loop(self) -> None:
        period = 1.0 / self.config.camera_hz
        while True:
            t = self.clock()
            try:
                frame = await asyncio.to_thread(self.robot.camera, "head")
            except Exception as exc:  # a camera fault is logged, the robot keeps its other senses
                self.log.event(self.now(), "camera_error", {"error": str(exc)[:200]})
                frame = None
            if frame is not None:
                self.frame = frame
                self.log.frame(self.now(), frame.rgb)
            state = self.state or self.robot.state()
            if self.perception is not None:
                self.scene = self.perception.perceive(frame, state)
            await asyncio.sleep(max(0.0, period - (self.clock() - t)))

    # --- planning ------------------------------------------------------------------------------------

    async def _planner_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s / 2)
            if not self._ready or self.gate.estopped or self._done_at is not None or self.state is None:
                continue
            if self.perception is not None and self.scene is None:
                continue  # the first plan waits for the first scene description
            link_up = self.gate.link_up
            if not link_up and self.config.link_policy == "edge-only" and self.fallback_planner is not None:
                idle = self._fallback_task is None or self._fallback_task.done()
                if idle and self._needs_plan():
                    self._fallback_task = asyncio.create_task(self._plan_once(self.fallback_planner, False))
                continue
            if not link_up or (self._plan_task is not None and not self._plan_task.done()):
                continue
            if self._needs_plan():
                self._plan_task = asyncio.create_task(self._plan_once(self.planner, True))

    def _needs_plan(self) -> bool:
        if self.now() < self._plan_not_before:
            return False
        latency = (self.last_plan_ms or 0.0) / 1000.0
        return self.executor.remaining_s(self.now()) <= self.config.refill_s + min(latency, 1.0)

    async def _plan_once(self, planner: Planner, primary: bool) -> None:
        assert self.state is not None
        self._plan_id += 1
        plan_id = self._plan_id
        obs_t = self.now()
        queue_s = self.executor.remaining_s(obs_t)  # what is left to run while this plan is made
        self._plan_obs_t[plan_id] = obs_t
        obs = Observation(obs_t, self.task.instruction, self.state, self.scene)
        queued = 0
        elapsed_in_plan = 0.0
        stale_logged = False

        def emit(action: Any, verified: bool) -> None:
            if threading.get_ident() != self._loop_thread:
                assert self._loop is not None
                self._loop.call_soon_threadsafe(emit, action, verified)
                return
            nonlocal queued, elapsed_in_plan, stale_logged
            now = self.now()
            if now - obs_t > self.config.plan_max_age_s:
                if not stale_logged:
                    self._safety_event("stale_plan", {"plan": plan_id, "age_s": round(now - obs_t, 3)})
                    stale_logged = True
                return
            deadline = obs_t + self.config.plan_max_age_s + elapsed_in_plan
            elapsed_in_plan += nominal_duration(action)
            self.executor.push(QueuedAction(action, deadline, verified, plan_id))
            queued += 1

        t = time.perf_counter()
        stats: PlanStats
        try:
            stats = await planner.plan(obs, emit)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a failing planner leaves the robot stopped; the episode goes on
            stats = PlanStats(rejected=f"planner_error: {type(exc).__name__}: {exc}"[:300])
        ms = (time.perf_counter() - t) * 1000.0
        await asyncio.sleep(0)  # let actions emitted from a worker thread land first
        if stats.rejected and stats.rejected.startswith("planner_error"):
            self._plan_not_before = self.now() + PLANNER_ERROR_BACKOFF_S  # do not spin on a broken planner
        if stats.rejected:
            self._safety_event(
                "plan_rejected", {"plan": plan_id, "error": stats.rejected, "text": stats.text[:300]}
            )
        self.last_plan_ms = round(ms, 2)
        self.plan_ms.append(ms)
        self.metrics.plans.labels(mode=planner.mode).inc()
        self.metrics.plan_seconds.labels(mode=planner.mode).observe(ms / 1000.0)
        self.log.plan(
            self.now(),
            planner.mode if primary else f"{planner.mode}(fallback)",
            ms,
            stats.tokens,
            queued,
            stats.mean_accepted_len,
            stats.predraft_hits,
            plan=plan_id,
            obs_t=round(obs_t, 4),
            queue_s=round(queue_s, 4),
            **stats.extra,
        )

    # --- link ----------------------------------------------------------------------------------------

    def _on_link(self, up: bool, **detail: Any) -> None:
        self.gate.set_link(up, **detail)
        if not up and self.config.link_policy == "stop":
            dropped = self.executor.clear()
            if dropped:
                self.log.event(self.now(), "queue_dropped", {"actions": dropped, "why": "link lost"})


# Records of the episode's course, not safety events.
_NOT_SAFETY = {"episode_start", "episode_end", "standing", "success", "planner_done", "camera_error"}


def zero(twist: tuple[float, float, float]) -> bool:
    return all(math.isclose(v, 0.0, abs_tol=1e-9) for v in twist)
