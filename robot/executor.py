"""The action queue and the executor that turns the action at its head into the command in force.

Every queued action carries a deadline (the latest time it may start); one found past its deadline is
dropped. A `move` holds its twist for its duration, a `turn` closes on the measured yaw, `stop` holds zero
briefly; `stand_up`, `stand_down` and `done` are handed to the daemon. After standing, the robot ignores
Moves for a while without saying so: a move's clock starts only once the state shows the robot moving.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from robot.actions import Done, Move, StandDown, StandUp, Stop, Turn
from robot.geometry import wrap_angle
from robot.interface import RobotState
from robot.safety import ZERO, Proposal

TURN_RATE = 1.0  # rad/s, the peak of a `turn`
TURN_GAIN = 2.5
TURN_TOL = math.radians(2.5)
STOP_HOLD_S = 0.3
READY_WAIT_S = 1.5  # how long a first move may wait for the robot to start moving


@dataclass
class QueuedAction:
    action: object
    deadline: float
    verified: bool
    plan_id: int


def nominal_duration(action: object) -> float:
    if isinstance(action, Move):
        return action.duration_s
    if isinstance(action, Turn):
        return abs(math.radians(action.deg)) / (TURN_RATE * 0.7) + 0.3
    if isinstance(action, Stop):
        return STOP_HOLD_S
    return 0.0


@dataclass
class _Running:
    item: QueuedAction
    start: float
    end: float  # the time the command stops being fresh
    confirmed: bool = True
    target_yaw: float = 0.0


class Executor:
    def __init__(self, on_drop: Callable[[str, dict], None]) -> None:
        self.queue: deque[QueuedAction] = deque()
        self.current: _Running | None = None
        self.awaiting_readiness = True
        self.requests: deque[object] = deque()  # posture changes and `done`, for the daemon
        self._on_drop = on_drop

    def push(self, item: QueuedAction) -> None:
        self.queue.append(item)

    def clear(self) -> int:
        n = len(self.queue) + (self.current is not None)
        self.queue.clear()
        self.current = None
        return n

    def __len__(self) -> int:
        return len(self.queue) + (self.current is not None)

    def remaining_s(self, now: float) -> float:
        left = sum(nominal_duration(q.action) for q in self.queue)
        if self.current is not None:
            left += max(0.0, self.current.end - now)
        return left

    def step(self, now: float, state: RobotState) -> Proposal | None:
        """The command in force at `now`, or None when nothing fresh is queued."""
        for _ in range(len(self.queue) + 2):
            if self.current is None and not self._start_next(now, state):
                return None
            proposal = self._command(now, state)
            if proposal is not None:
                return proposal
            self.current = None
        return None

    def _start_next(self, now: float, state: RobotState) -> bool:
        while self.queue:
            item = self.queue.popleft()
            if now > item.deadline:
                self._on_drop(
                    "stale_action_dropped", {"plan": item.plan_id, "late_s": round(now - item.deadline, 3)}
                )
                continue
            a = item.action
            if isinstance(a, StandUp | StandDown | Done):
                self.requests.append(a)
                continue
            if isinstance(a, Move):
                confirmed = not self.awaiting_readiness or a.vx == a.vy == a.vyaw == 0.0
                end = now + a.duration_s + (0.0 if confirmed else READY_WAIT_S)
                self.current = _Running(item, now, end, confirmed)
            elif isinstance(a, Turn):
                self.current = _Running(item, now, now + nominal_duration(a) * 2 + 1.0)
                self.current.target_yaw = state.yaw + math.radians(a.deg)
            else:  # Stop
                self.current = _Running(item, now, now + STOP_HOLD_S)
            return True
        return False

    def _command(self, now: float, state: RobotState) -> Proposal | None:
        run = self.current
        assert run is not None
        a, verified = run.item.action, run.item.verified
        if now >= run.end:
            return None
        if isinstance(a, Move):
            if not run.confirmed and _moving(state):
                run.confirmed, self.awaiting_readiness = True, False
                run.end = now + a.duration_s
            return Proposal((a.vx, a.vy, a.vyaw), run.end, verified)
        if isinstance(a, Turn):
            err = wrap_angle(run.target_yaw - state.yaw)
            if abs(err) < TURN_TOL:
                return None
            if _moving(state):
                self.awaiting_readiness = False
            w = max(-TURN_RATE, min(TURN_RATE, TURN_GAIN * err))
            w = math.copysign(max(abs(w), 0.25), w)
            return Proposal((0.0, 0.0, w), run.end, verified)
        return Proposal(ZERO, run.end, verified)


def _moving(state: RobotState) -> bool:
    return abs(state.vx) > 0.03 or abs(state.vy) > 0.03 or abs(state.vyaw) > 0.05
