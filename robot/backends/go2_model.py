"""The Go2 sport-mode behaviour that every simulated backend reproduces (DESIGN.md, "Interface").

* after `stand_up` the joints are locked and Move is ignored until `balance_stand`;
* Move is ignored for `ready_delay_s` after `balance_stand` (the real robot gives no readiness signal:
  the daemon confirms readiness from the state);
* the robot clamps velocities to its own range and slews toward them at bounded accelerations;
* Move must be re-sent: after `move_timeout_s` without one the robot stops by itself;
* with an error code set only `damp` and `recovery_stand` are accepted.
Time is whatever clock the backend passes in, so tests can drive it by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from robot.interface import Code, Mode, Posture


@dataclass(frozen=True)
class Go2Params:
    max_vx: float = 1.5  # the robot's own clamp, wider than the daemon's safety limits
    max_vy: float = 0.8
    max_vyaw: float = 2.0
    accel: float = 2.5  # m/s² toward the commanded twist
    yaw_accel: float = 5.0  # rad/s²
    stand_up_s: float = 0.8
    stand_down_s: float = 0.8
    ready_delay_s: float = 0.5
    move_timeout_s: float = 0.4
    standing_height_m: float = 0.30
    lying_height_m: float = 0.10


def _clamp(v: float, limit: float) -> float:
    return max(-limit, min(limit, v))


def _toward(current: float, target: float, step: float) -> float:
    if abs(target - current) <= step:
        return target
    return current + math.copysign(step, target - current)


class Go2Motion:
    """Posture, mode and body velocity of a Go2 as functions of the calls made and the time passed."""

    def __init__(self, params: Go2Params | None = None, now: float = 0.0) -> None:
        self.p = params or Go2Params()
        self.posture: Posture = "lying"
        self.mode: Mode = "idle"
        self.error_code = 0
        self.velocity = (0.0, 0.0, 0.0)
        self._target = (0.0, 0.0, 0.0)
        self._last_move = -math.inf
        self._transition_until = now
        self._ready_at = math.inf
        self._t = now

    # --- calls ---------------------------------------------------------------------------------------

    def stand_up(self, now: float) -> int:
        self.advance(now)
        if self.error_code:
            return Code.FAULT
        if self.posture in ("standing", "standing_up"):
            self.mode = "locked"
            self._halt()
            return Code.OK
        if self.posture not in ("lying", "damped"):
            return Code.WRONG_POSTURE
        self.posture, self.mode = "standing_up", "locked"
        self._transition_until = now + self.p.stand_up_s
        return Code.OK

    def balance_stand(self, now: float) -> int:
        self.advance(now)
        if self.error_code:
            return Code.FAULT
        if self.posture != "standing":
            return Code.WRONG_POSTURE
        if self.mode not in ("balance_stand", "move"):
            self._ready_at = now + self.p.ready_delay_s
        self.mode = "balance_stand"
        return Code.OK

    def recovery_stand(self, now: float) -> int:
        self.advance(now)
        self.error_code = 0
        self._halt()
        if self.posture != "standing":
            self.posture = "standing_up"
            self._transition_until = now + self.p.stand_up_s
        self.mode = "balance_stand"
        self._ready_at = now + self.p.stand_up_s + self.p.ready_delay_s
        return Code.OK

    def stand_down(self, now: float) -> int:
        self.advance(now)
        if self.error_code:
            return Code.FAULT
        self._halt()
        if self.posture in ("lying", "lying_down", "damped"):
            return Code.OK
        self.posture, self.mode = "lying_down", "locked"
        self._transition_until = now + self.p.stand_down_s
        self._ready_at = math.inf
        return Code.OK

    def damp(self, now: float) -> int:
        self.advance(now)
        self._halt()
        self.velocity = (0.0, 0.0, 0.0)
        self.posture, self.mode = "damped", "damp"
        self._ready_at = math.inf
        return Code.OK

    def stop_move(self, now: float) -> int:
        self.advance(now)
        self._halt()
        if self.mode == "move":
            self.mode = "balance_stand"
        return Code.OK

    def move(self, now: float, vx: float, vy: float, vyaw: float) -> int:
        self.advance(now)
        if self.error_code:
            return Code.FAULT
        if not all(math.isfinite(v) for v in (vx, vy, vyaw)):
            return Code.WRONG_POSTURE
        # Ignored, as on the real robot, while locked after stand_up or before it is ready.
        if self.mode not in ("balance_stand", "move") or now < self._ready_at:
            return Code.OK
        self._target = (_clamp(vx, self.p.max_vx), _clamp(vy, self.p.max_vy), _clamp(vyaw, self.p.max_vyaw))
        self._last_move = now
        self.mode = "move"
        return Code.OK

    def fault(self, code: int, now: float) -> None:
        """A fault reported by the robot (tests inject them): it stops and refuses Moves."""
        self.advance(now)
        self.error_code = code
        self._halt()
        self.velocity = (0.0, 0.0, 0.0)
        self.posture = "fallen" if code else self.posture

    def blocked(self) -> None:
        """The base hit something: its velocity drops to zero (the command stays in force)."""
        self.velocity = (0.0, 0.0, 0.0)

    # --- time ----------------------------------------------------------------------------------------

    def advance(self, now: float) -> tuple[float, float, float]:
        """Advance to `now`; returns the body velocity averaged over the step (for integrating the pose)."""
        dt = max(0.0, now - self._t)
        self._t = max(self._t, now)
        if self.posture in ("standing_up", "lying_down") and now >= self._transition_until:
            self.posture = "standing" if self.posture == "standing_up" else "lying"
        if self.mode == "move" and now - self._last_move > self.p.move_timeout_s:
            self._halt()
            self.mode = "balance_stand"
        target = self._target if self.mode == "move" and self.posture == "standing" else (0.0, 0.0, 0.0)
        before = self.velocity
        lin, ang = self.p.accel * dt, self.p.yaw_accel * dt
        self.velocity = (
            _toward(before[0], target[0], lin),
            _toward(before[1], target[1], lin),
            _toward(before[2], target[2], ang),
        )
        return tuple((a + b) / 2 for a, b in zip(before, self.velocity, strict=True))  # type: ignore[return-value]

    def height(self) -> float:
        if self.posture == "standing":
            return self.p.standing_height_m
        return (
            self.p.lying_height_m
            if self.posture in ("lying", "damped", "fallen")
            else ((self.p.standing_height_m + self.p.lying_height_m) / 2)
        )

    def _halt(self) -> None:
        self._target = (0.0, 0.0, 0.0)
        self._last_move = -math.inf
