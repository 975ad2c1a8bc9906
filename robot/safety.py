"""The safety gate: the one thing between every command and `move` (DESIGN.md, "Safety semantics").

Each control tick the daemon hands the gate the command in force (or none) and sends what the gate
returns. The gate enforces limits and acceleration limits, the watchdog (no fresh command → zero), the link
policy, the latched e-stop and verification, and reports every safety event with its time.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

Twist = tuple[float, float, float]
ZERO: Twist = (0.0, 0.0, 0.0)
Source = Literal["plan", "watchdog", "estop", "link-loss", "none"]
SafetyState = Literal["ok", "stale", "estop", "link-lost"]
LinkPolicy = Literal["stop", "edge-only"]
EventSink = Callable[[str, dict], None]


@dataclass(frozen=True)
class Limits:
    vx: float = 1.0
    vy: float = 0.5
    vyaw: float = 1.5
    ax: float = 2.0  # m/s², on speeding up only: slowing down is never limited
    ay: float = 2.0
    ayaw: float = 4.0  # rad/s²

    def halved(self) -> Limits:
        return replace(self, vx=self.vx / 2, vy=self.vy / 2, vyaw=self.vyaw / 2)

    def within(self, twist: Twist) -> bool:
        return abs(twist[0]) <= self.vx and abs(twist[1]) <= self.vy and abs(twist[2]) <= self.vyaw


@dataclass(frozen=True)
class Proposal:
    """The command in force: its twist, until when it is fresh, and whether verified tokens produced it."""

    twist: Twist
    fresh_until: float
    verified: bool = True


@dataclass(frozen=True)
class Decision:
    twist: Twist
    source: Source
    safety: SafetyState
    verified: bool


class SafetyGate:
    """Thread-safe: the status server and signal handlers latch the e-stop from other threads."""

    def __init__(
        self,
        events: EventSink,
        *,
        limits: Limits | None = None,
        link_policy: LinkPolicy = "stop",
        tick_s: float = 0.04,
    ) -> None:
        self.limits = limits or Limits()
        self.link_policy: LinkPolicy = link_policy
        self.tick_s = tick_s
        self._events = events
        self._lock = threading.Lock()
        self._estop_reason: str | None = None
        self._link_up = True
        self._last: Twist = ZERO
        self._last_t: float | None = None
        self._had_command = False
        self._prev_source: Source = "none"
        # True for `--planner edge-only`: the draft's unverified plans may drive, under halved limits.
        self.unverified_allowed = False

    # --- state set from anywhere ---------------------------------------------------------------------

    @property
    def estopped(self) -> bool:
        return self._estop_reason is not None

    @property
    def link_up(self) -> bool:
        return self._link_up

    def latch(self, reason: str, **detail: object) -> None:
        """Latch the e-stop (idempotent); only `reset` releases it."""
        with self._lock:
            if self._estop_reason is None:
                self._estop_reason = reason
                self._event("estop", {"reason": reason, **detail})

    def reset(self) -> bool:
        with self._lock:
            if self._estop_reason is None:
                return False
            self._event("estop_reset", {"reason": self._estop_reason})
            self._estop_reason = None
            return True

    def set_link(self, up: bool, **detail: object) -> None:
        with self._lock:
            if up == self._link_up:
                return
            self._link_up = up
            if up:
                self._event("link_restored", dict(detail))
            else:
                self._event("link_lost", {"policy": self.link_policy, **detail})

    def refuse(self, reason: str, **detail: object) -> None:
        """Record an action or plan that was refused before it could reach the queue."""
        with self._lock:
            self._event(reason, dict(detail))

    @property
    def active_limits(self) -> Limits:
        if self.unverified_allowed or (not self._link_up and self.link_policy == "edge-only"):
            return self.limits.halved()
        return self.limits

    # --- the tick ------------------------------------------------------------------------------------

    def decide(self, now: float, proposal: Proposal | None) -> Decision:
        with self._lock:
            decision = self._decide(now, proposal)
            self._last = decision.twist
            self._prev_source = decision.source
            self._last_t = now
            return decision

    def _decide(self, now: float, p: Proposal | None) -> Decision:
        if self._estop_reason is not None:
            return Decision(ZERO, "estop", "estop", False)
        if not self._link_up and self.link_policy == "stop":
            return Decision(ZERO, "link-loss", "link-lost", False)
        link_safety: SafetyState = "ok" if self._link_up else "link-lost"
        if p is None or now > p.fresh_until:
            if not self._had_command:
                return Decision(ZERO, "none", link_safety, False)
            if self._prev_source == "plan":
                reason = "queue_empty" if p is None else "stale"
                late = {} if p is None else {"late_s": round(now - p.fresh_until, 3)}
                self._event("watchdog", {"reason": reason, **late})
            return Decision(ZERO, "watchdog", "stale" if self._link_up else link_safety, False)
        self._had_command = True
        if not all(math.isfinite(v) for v in p.twist):
            self._estop_reason = "fault"
            self._event("estop", {"reason": "fault", "detail": "non-finite command"})
            return Decision(ZERO, "estop", "estop", False)
        edge_only = not self._link_up or self.unverified_allowed  # link down here means policy edge-only
        if not p.verified and not edge_only:
            self._event("unverified_refused", {"twist": list(p.twist)})
            return Decision(ZERO, "watchdog", "stale", False)
        if not self.limits.within(p.twist):
            self._event("out_of_range_refused", {"twist": list(p.twist)})
            return Decision(ZERO, "watchdog", "stale", p.verified)
        return Decision(self._shape(now, p.twist), "plan", link_safety, p.verified)

    def _shape(self, now: float, twist: Twist) -> Twist:
        """Clamp to the active limits, then limit how fast each component may grow."""
        lim = self.active_limits
        clamped = (_clamp(twist[0], lim.vx), _clamp(twist[1], lim.vy), _clamp(twist[2], lim.vyaw))
        dt = self.tick_s if self._last_t is None else max(0.0, min(now - self._last_t, 0.2))
        steps = (lim.ax * dt, lim.ay * dt, lim.ayaw * dt)
        return tuple(
            _grow(last, want, step) for last, want, step in zip(self._last, clamped, steps, strict=True)
        )  # type: ignore[return-value]

    def _event(self, name: str, detail: dict) -> None:
        self._events(name, detail)


def _clamp(v: float, limit: float) -> float:
    return max(-limit, min(limit, v))


def _grow(last: float, want: float, step: float) -> float:
    """Toward `want`; immediate when slowing down (|want| ≤ |last|, same sign), at most `step` otherwise."""
    if want == 0.0 or (abs(want) <= abs(last) and math.copysign(1, want) == math.copysign(1, last)):
        return want
    base = last if math.copysign(1, want) == math.copysign(1, last) else 0.0
    return base + max(-step, min(step, want - base))
