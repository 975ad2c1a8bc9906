"""Helpers of the robot tests: run a daemon episode on the fake, planners with scripted misbehaviour."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from robot import (
    Completion,
    DaemonConfig,
    EpisodeLog,
    FakeRobot,
    ModelPlanner,
    OraclePerception,
    PlanStats,
    RobotDaemon,
    ScriptedPlanner,
    Task,
    load_task,
)
from robot.actions import Move


class RecordingRobot(FakeRobot):
    """The fake, recording every Move it receives."""

    def __init__(self, task: Task, **kwargs: Any) -> None:
        super().__init__(task, **kwargs)
        self.moves: list[tuple[float, float, float]] = []

    def move(self, vx: float, vy: float, vyaw: float) -> int:
        self.moves.append((vx, vy, vyaw))
        return super().move(vx, vy, vyaw)


class TextBackend:
    """A plan backend that answers fixed text, delivered as verified (or not) pieces."""

    def __init__(self, texts: list[str], *, verified: bool = True, mode: str = "sd", pieces: int = 1) -> None:
        self.texts = texts
        self.verified = verified
        self.mode = mode
        self.constrained = False
        self.pieces = pieces
        self.calls = 0

    async def complete(self, prompt: str, *, max_tokens: int, schema: dict, on_verified) -> Completion:
        text = self.texts[min(self.calls, len(self.texts) - 1)]
        self.calls += 1
        step = max(1, len(text) // self.pieces)
        for i in range(0, len(text), step):
            on_verified(text[i : i + step])
            await asyncio.sleep(0)
        return Completion(text, tokens=len(text) // 3)


class StallingPlanner:
    """Straight 0.5 s moves; the call numbered `stall_at` takes `stall_s` before answering."""

    mode = "scripted"

    def __init__(self, stall_at: int, stall_s: float, clock: Callable[[], float]) -> None:
        self.stall_at, self.stall_s = stall_at, stall_s
        self.calls = 0
        self.stall_started: float | None = None
        self.clock = clock

    async def plan(self, obs, emit) -> PlanStats:
        self.calls += 1
        if self.calls == self.stall_at:
            self.stall_started = obs.t
            await asyncio.sleep(self.stall_s)
        emit(Move(action="move", vx=0.4, vy=0.0, vyaw=0.0, duration_s=0.5), True)
        return PlanStats()


def daemon_for(
    task: Task | str,
    planner: Any = None,
    *,
    robot: FakeRobot | None = None,
    log_dir: Any = None,
    **config: Any,
) -> RobotDaemon:
    task = load_task(task) if isinstance(task, str) else task
    robot = robot or RecordingRobot(task)
    planner = planner or ScriptedPlanner(task)
    daemon_kwargs = {
        k: config.pop(k) for k in ("fallback_planner", "link_ping", "unverified_allowed") if k in config
    }
    return RobotDaemon(
        robot,
        task,
        planner,
        OraclePerception(task),
        config=DaemonConfig(**config),
        log=EpisodeLog(log_dir),
        **daemon_kwargs,
    )


def model_planner(texts: list[str], **kwargs: Any) -> ModelPlanner:
    return ModelPlanner(TextBackend(texts, **kwargs))


def ticks(daemon: RobotDaemon) -> list[dict]:
    return [r for r in daemon.log.records if r["kind"] == "tick"]


def events(daemon: RobotDaemon, name: str | None = None) -> list[dict]:
    return [r for r in daemon.log.records if r["kind"] == "event" and (name is None or r["name"] == name)]


def moving(tick: dict) -> bool:
    return any(abs(v) > 1e-9 for v in tick["cmd"])


def first_zero_after(daemon: RobotDaemon, t: float) -> float:
    for tick in ticks(daemon):
        if tick["t"] >= t and not moving(tick):
            return tick["t"]
    raise AssertionError(f"the command never went to zero after t={t}")
