"""Sensing-to-action: the perception rate follows what the robot is doing (DESIGN.md, "Perception").

Wraps a learned perception. From the robot's measured twist: walking (or turning) → every camera frame is
perceived; standing still → one frame in `still_every`; and at any rate a frame whose image has not changed
since the last perceived one (mean absolute log-intensity change below `change_threshold`: the frame-level
event gate) is not perceived again. A frame not perceived costs nothing and reuses the last description
(re-stamped). Counts of frames offered and perceived, per motion, are kept for the compute-saved figure.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from robot.interface import CameraFrame, RobotState
from robot.perception.learned import LearnedPerception
from robot.perception.scene import SceneDescription

MOVING_VX, TURNING_VYAW = 0.05, 0.1


def motion(state: RobotState) -> str:
    if abs(state.vx) > MOVING_VX or abs(state.vy) > MOVING_VX:
        return "forward"
    return "turning" if abs(state.vyaw) > TURNING_VYAW else "still"


class ActionAwarePerception:
    def __init__(
        self, inner: LearnedPerception, still_every: int = 5, change_threshold: float = 0.01
    ) -> None:
        self.inner = inner
        self.name = f"{inner.name}+adaptive"
        self.still_every = still_every
        self.change_threshold = change_threshold
        self.offered: Counter[str] = Counter()
        self.perceived: Counter[str] = Counter()
        self._last: SceneDescription | None = None
        self._last_log: np.ndarray | None = None
        self._since = 0

    @property
    def latencies_ms(self) -> list[float]:
        return self.inner.latencies_ms

    def perceive(self, frame: CameraFrame | None, state: RobotState) -> SceneDescription:
        if frame is None or self._last is None:
            return self._run(frame, state, motion(state))
        kind = motion(state)
        self.offered[kind] += 1
        self._since += 1
        log_i = np.log1p(frame.rgb.astype(np.float32)) / np.log(256.0)
        changed = (
            self._last_log is None or float(np.abs(log_i - self._last_log).mean()) > self.change_threshold
        )
        due = kind != "still" or self._since >= self.still_every
        if due and changed:
            self.offered[kind] -= 1  # counted again by _run
            return self._run(frame, state, kind, log_i)
        return self._last.model_copy(update={"stamp": frame.stamp})

    def _run(self, frame: CameraFrame | None, state: RobotState, kind: str, log_i: np.ndarray | None = None):  # type: ignore[no-untyped-def]
        scene = self.inner.perceive(frame, state)
        self.offered[kind] += 1
        if frame is not None:
            self.perceived[kind] += 1
            self._last, self._since = scene, 0
            self._last_log = (
                log_i if log_i is not None else np.log1p(frame.rgb.astype(np.float32)) / np.log(256.0)
            )
        return scene

    def summary(self) -> dict:
        offered, perceived = sum(self.offered.values()), sum(self.perceived.values())
        return self.inner.summary() | {
            "name": self.name,
            "frames_offered": offered,
            "frames_perceived": perceived,
            "compute_fraction": round(perceived / offered, 4) if offered else 1.0,
            "by_motion": {k: [self.perceived[k], self.offered[k]] for k in sorted(self.offered)},
        }
