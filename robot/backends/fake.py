"""The `fake` backend: pure Python, an injectable clock, the Go2's quirks, collisions as disc-vs-footprint."""

from __future__ import annotations

import math
import threading

import numpy as np

from robot.backends.go2_model import Go2Motion, Go2Params
from robot.geometry import ROBOT_RADIUS_M, bearing_to
from robot.interface import CameraFrame, Clock, Code, RobotState, monotonic
from robot.tasks import COLOR_RGB, Task

STEP_S = 0.005  # pose integration step
COLLISION_GAP_S = 0.5  # contacts closer together than this are one collision
CAMERA_HFOV = math.radians(90)


class FakeRobot:
    """A Go2 on a flat floor. Pass `clock` (a callable returning seconds) to drive time by hand."""

    def __init__(
        self, task: Task | None = None, *, clock: Clock = monotonic, params: Go2Params | None = None
    ) -> None:
        self.clock = clock
        self.task = task
        self.motion = Go2Motion(params, now=clock())
        self.move_timeout_s = self.motion.p.move_timeout_s
        start = task.start if task else None
        self.x, self.y = (start.x, start.y) if start else (0.0, 0.0)
        self.yaw = start.yaw if start else 0.0
        self.collisions = 0
        self._last_contact = -math.inf
        self._t = clock()
        self._lock = threading.Lock()
        self._closed = False

    # --- RobotInterface ------------------------------------------------------------------------------

    def stand_up(self) -> int:
        return self._call(self.motion.stand_up)

    def balance_stand(self) -> int:
        return self._call(self.motion.balance_stand)

    def stand_down(self) -> int:
        return self._call(self.motion.stand_down)

    def stop_move(self) -> int:
        return self._call(self.motion.stop_move)

    def damp(self) -> int:
        return self._call(self.motion.damp)

    def recovery_stand(self) -> int:
        return self._call(self.motion.recovery_stand)

    def move(self, vx: float, vy: float, vyaw: float) -> int:
        return self._call(lambda now: self.motion.move(now, vx, vy, vyaw))

    def state(self) -> RobotState:
        with self._lock:
            now = self._advance()
            m = self.motion
            vx, vy, vyaw = m.velocity
            return RobotState(self.x, self.y, self.yaw, vx, vy, vyaw, m.posture, m.mode, m.error_code, now)

    def camera(self, name: str = "head") -> CameraFrame:
        """A coarse synthetic view: each object in the field of view is a coloured column."""
        if name != "head":
            raise ValueError(f"no camera {name!r} (the fake has 'head')")
        with self._lock:
            now = self._advance()
            rgb = np.full((48, 64, 3), 90, dtype=np.uint8)
            rgb[24:] = 60  # floor
            for obj in self.task.objects if self.task else []:
                bearing = bearing_to(self.x, self.y, self.yaw, obj.x, obj.y)
                if abs(bearing) > CAMERA_HFOV / 2:
                    continue
                dist = max(math.hypot(obj.x - self.x, obj.y - self.y), 0.2)
                col = int((0.5 - bearing / CAMERA_HFOV) * 63)
                half = max(1, int(6 / dist))
                rgb[24 - half : 24 + half, max(0, col - half) : col + half + 1] = [
                    int(255 * c) for c in COLOR_RGB[obj.color]
                ]
            return CameraFrame(rgb=rgb, stamp=now, name=name)

    def close(self) -> None:
        self._closed = True

    # --- test hooks ----------------------------------------------------------------------------------

    def inject_fault(self, code: int = 1001) -> None:
        with self._lock:
            self.motion.fault(code, self._advance())

    # --- internals -----------------------------------------------------------------------------------

    def _call(self, fn) -> int:
        if self._closed:
            return Code.UNAVAILABLE
        with self._lock:
            return int(fn(self._advance()))

    def _advance(self) -> float:
        now = self.clock()
        while self._t < now:
            t = min(now, self._t + STEP_S)
            vx, vy, vyaw = self.motion.advance(t)
            dt = t - self._t
            self._t = t
            if vx == vy == vyaw == 0.0:
                continue
            c, s = math.cos(self.yaw), math.sin(self.yaw)
            nx = self.x + (c * vx - s * vy) * dt
            ny = self.y + (s * vx + c * vy) * dt
            if self._blocked(nx, ny):
                self.motion.blocked()
                if t - self._last_contact > COLLISION_GAP_S:
                    self.collisions += 1
                self._last_contact = t
            else:
                self.x, self.y = nx, ny
            self.yaw = math.atan2(math.sin(self.yaw + vyaw * dt), math.cos(self.yaw + vyaw * dt))
        self.motion.advance(now)
        return now

    def _blocked(self, x: float, y: float) -> bool:
        if self.task is None:
            return False
        return any(o.surface_distance(x, y) < ROBOT_RADIUS_M for o in self.task.obstacles)
