"""`oracle` perception: the simulator's ground truth as the scene description a camera model gives."""

from __future__ import annotations

import math

from robot.geometry import bearing_to, ray_distance
from robot.interface import CameraFrame, RobotState
from robot.perception.scene import (
    CAMERA_HFOV_RAD,
    SceneDescription,
    SeenObject,
    bearing_bin,
    distance_bin,
)
from robot.tasks import Task

MAX_RANGE_M = 8.0
AHEAD_M = 0.8


class OraclePerception:
    name = "oracle"

    def __init__(self, task: Task, hfov_rad: float = CAMERA_HFOV_RAD) -> None:
        self.task = task
        self.hfov_rad = hfov_rad  # the learned models' labels use the sim camera's own field of view

    def perceive(self, frame: CameraFrame | None, state: RobotState) -> SceneDescription:
        x, y, yaw = state.pose
        seen = []
        for obj in self.task.objects:
            bearing = bearing_to(x, y, yaw, obj.x, obj.y)
            dist = obj.surface_distance(x, y)
            if abs(bearing) > self.hfov_rad / 2 or dist > MAX_RANGE_M or self._occluded(x, y, obj.x, obj.y):
                continue
            seen.append(
                SeenObject(
                    name=obj.name,
                    shape=obj.shape,
                    color=obj.color,
                    bearing=bearing_bin(bearing),
                    distance=distance_bin(dist),
                    bearing_rad=round(bearing, 3),
                    distance_m=round(dist, 2),
                )
            )
        obstacles = self.task.obstacles
        free = {
            d: ray_distance(obstacles, x, y, yaw + off, 3.0)
            for d, off in (("ahead", 0.0), ("left", math.pi / 2), ("right", -math.pi / 2))
        }
        best = max(free, key=lambda d: free[d])
        return SceneDescription(
            stamp=state.stamp,
            objects=seen,
            obstacle_ahead=free["ahead"] < AHEAD_M,
            free_direction=best if free[best] >= 0.5 else "back",
        )

    def _occluded(self, x: float, y: float, tx: float, ty: float) -> bool:
        dist = math.hypot(tx - x, ty - y)
        n = max(2, int(dist / 0.1))
        for i in range(1, n):
            px, py = x + (tx - x) * i / n, y + (ty - y) * i / n
            if any(o.surface_distance(px, py) == 0.0 and o.half_height > 0.25 for o in self.task.obstacles):
                return True
        return False
