"""Planar geometry of the scene: angles, distances to footprints, collisions of the robot's disc."""

from __future__ import annotations

import math
from collections.abc import Sequence

# The fake backend and the scripted planner treat the Go2 (0.70 × 0.31 m) as a disc of this radius.
ROBOT_RADIUS_M = 0.3


def wrap_angle(a: float) -> float:
    """The angle in (-π, π]."""
    return math.atan2(math.sin(a), math.cos(a))


def bearing_to(x: float, y: float, yaw: float, tx: float, ty: float) -> float:
    """The bearing of (tx, ty) seen from a robot at (x, y) heading `yaw`: 0 ahead, positive to the left."""
    return wrap_angle(math.atan2(ty - y, tx - x) - yaw)


def to_body(x: float, y: float, yaw: float, tx: float, ty: float) -> tuple[float, float]:
    dx, dy = tx - x, ty - y
    c, s = math.cos(yaw), math.sin(yaw)
    return (c * dx + s * dy, -s * dx + c * dy)


def distance_to_surface(
    shape: str, cx: float, cy: float, yaw: float, size: float | Sequence[float], x: float, y: float
) -> float:
    """Distance from (x, y) to a body's footprint in the ground plane (0 inside it)."""
    if shape == "box":
        hx, hy = float(size[0]), float(size[1])  # type: ignore[index]
        lx, ly = to_body(cx, cy, yaw, x, y)
        dx, dy = max(abs(lx) - hx, 0.0), max(abs(ly) - hy, 0.0)
        return math.hypot(dx, dy)
    return max(math.hypot(x - cx, y - cy) - float(size), 0.0)  # type: ignore[arg-type]


def ray_distance(
    bodies: Sequence, x: float, y: float, heading: float, max_range: float, step: float = 0.05
) -> float:
    """How far a disc of the robot's radius travels along `heading` before touching a body (≤ max_range)."""
    c, s = math.cos(heading), math.sin(heading)
    d = 0.0
    while d < max_range:
        px, py = x + c * d, y + s * d
        if any(b.surface_distance(px, py) < ROBOT_RADIUS_M for b in bodies):
            return d
        d += step
    return max_range
