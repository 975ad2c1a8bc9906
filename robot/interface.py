"""The robot interface: the Unitree SDK2 sport-mode shape every backend implements (DESIGN.md, "Robot side").

Every command returns an int code, 0 = ok, like the SDK's RPC calls. `move` is fire-and-forget and must be
re-sent: the robot stops by itself when Moves stop arriving for `move_timeout_s`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal, Protocol, runtime_checkable

import numpy as np

Clock = Callable[[], float]
Posture = Literal["lying", "standing_up", "standing", "lying_down", "damped", "fallen"]
Mode = Literal["idle", "locked", "balance_stand", "move", "damp", "recovery"]


class Code(IntEnum):
    """Return codes of the sport-mode calls (0 = ok)."""

    OK = 0
    WRONG_POSTURE = 3101  # the call is not allowed in the current posture (e.g. balance_stand while lying)
    FAULT = 3102  # the robot reports an error; only damp and recovery_stand are accepted
    NO_CAMERA = 3103
    UNAVAILABLE = 3104  # the backend is closed or the robot cannot be reached


@dataclass(frozen=True)
class RobotState:
    """What the robot reports: pose in the world frame (x forward from the start, y left, yaw in rad),
    body-frame velocity (vx, vy m/s, vyaw rad/s), posture, mode, error code, stamp (backend clock, s)."""

    x: float
    y: float
    yaw: float
    vx: float
    vy: float
    vyaw: float
    posture: Posture
    mode: Mode
    error_code: int
    stamp: float

    @property
    def pose(self) -> tuple[float, float, float]:
        return (self.x, self.y, self.yaw)

    @property
    def velocity(self) -> tuple[float, float, float]:
        return (self.vx, self.vy, self.vyaw)

    def stopped(self, tol_v: float = 0.03, tol_w: float = 0.05) -> bool:
        return abs(self.vx) < tol_v and abs(self.vy) < tol_v and abs(self.vyaw) < tol_w


@dataclass(frozen=True)
class CameraFrame:
    """An RGB frame (H×W×3 uint8) and the backend time it was taken."""

    rgb: np.ndarray
    stamp: float
    name: str = "head"


@runtime_checkable
class RobotInterface(Protocol):
    """The Go2 sport-mode client shape; `fake`, `sim` and `unitree` backends implement it."""

    move_timeout_s: float

    def stand_up(self) -> int: ...
    def balance_stand(self) -> int: ...
    def stand_down(self) -> int: ...
    def stop_move(self) -> int: ...
    def damp(self) -> int: ...
    def recovery_stand(self) -> int: ...
    def move(self, vx: float, vy: float, vyaw: float) -> int: ...
    def state(self) -> RobotState: ...
    def camera(self, name: str = "head") -> CameraFrame: ...
    def close(self) -> None: ...


def monotonic() -> float:
    return time.monotonic()
