"""The planner's teacher: the scripted expert's path turned into the long plans a slow model planner needs.

`ScriptedPlanner` re-plans every half second from the measured pose, which a model that takes seconds per
plan cannot do. This teacher uses the same privileged knowledge (the task's goal, an A* path around the
obstacles) but answers with the whole path as at most three straight segments (turn to face the segment,
move along it) and a stop, so that one plan, executed, brings the robot to the goal; the next plan corrects
what the execution missed. Numbers are rounded the way a model can copy them from the prompt (whole degrees,
a fixed cruise speed, tenths of a second).
"""

from __future__ import annotations

import json
import math

from robot.actions import MAX_DURATION_S, Move, Stop, Turn
from robot.geometry import wrap_angle
from robot.interface import RobotState
from robot.scripted import ScriptedPlanner
from robot.tasks import Task

CRUISE = 0.5  # m/s: duration_s = distance / CRUISE, i.e. twice the distance in metres
MAX_SEGMENTS = 3
MIN_TURN_DEG = 4.0
MIN_MOVE_M = 0.05


class PlanTeacher:
    """Plans for `task` from any pose; `None` once the task's goal is reached (nothing left to do)."""

    def __init__(self, task: Task) -> None:
        self.task = task
        # The scripted expert's goal logic and occupancy grid are the one definition of "where to go".
        self._expert = ScriptedPlanner(task)

    def plan(self, state: RobotState) -> list[Move | Turn | Stop] | None:
        x, y, yaw = state.pose
        goal = self._expert._goal(x, y, yaw)
        if goal.kind == "done":
            return None
        if goal.kind == "face":
            err = math.degrees(wrap_angle(math.atan2(goal.y - y, goal.x - x) - yaw))
            return [Turn(action="turn", deg=round(err)), Stop(action="stop")]
        actions: list[Move | Turn | Stop] = []
        heading = yaw
        px, py = x, y
        for wx, wy in self._segments(x, y, goal.x, goal.y):
            dist = math.hypot(wx - px, wy - py)
            if dist < MIN_MOVE_M:
                continue
            err = math.degrees(wrap_angle(math.atan2(wy - py, wx - px) - heading))
            if abs(err) >= MIN_TURN_DEG:
                actions.append(Turn(action="turn", deg=round(err)))
                heading = wrap_angle(heading + math.radians(round(err)))
            duration = round(dist / CRUISE, 1)
            if actions and isinstance(actions[-1], Move):  # no turn between: one longer move
                duration += actions.pop().duration_s
            if duration > 0:
                actions.append(
                    Move(action="move", vx=CRUISE, duration_s=min(MAX_DURATION_S, round(duration, 1)))
                )
            px, py = wx, wy
        actions.append(Stop(action="stop"))
        return actions

    def _segments(self, x: float, y: float, gx: float, gy: float) -> list[tuple[float, float]]:
        """The A* path pulled tight: from each corner, the farthest path point still in sight."""
        grid = self._expert._grid
        path = grid._astar(grid.cell(x, y), grid.cell(gx, gy))
        points = [grid.center(*c) for c in path[1:-1]] + [(gx, gy)] if path else [(gx, gy)]
        corners: list[tuple[float, float]] = []
        cx, cy, i = x, y, 0
        while i < len(points) and len(corners) < MAX_SEGMENTS:
            j = i
            for k in range(i, len(points)):
                if grid._in_sight(cx, cy, *points[k]):
                    j = k
            corners.append(points[j])
            cx, cy = points[j]
            i = j + 1
        return corners


def plan_text(actions: list[Move | Turn | Stop]) -> str:
    """The plan as the model learns to write it: compact JSON, defaults (vy, vyaw = 0) left out."""

    def short(v: object) -> object:
        return int(v) if isinstance(v, float) and v.is_integer() else v

    items = [
        {k: short(v) for k, v in a.model_dump(mode="json", exclude_defaults=True).items()} for a in actions
    ]
    return json.dumps(items, separators=(",", ":"))
