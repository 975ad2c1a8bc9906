"""`scripted`: a deterministic planner without a model, for tests and as the simulator's reference.

It reads the task's ground truth, finds a path around the obstacles on an occupancy grid (A*), and emits
short pursuit moves toward the path (a turn first when the heading is far off), then a stop. Each plan
covers about half a second, so the daemon's refill keeps it corrected by the measured pose.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

from robot.actions import Done, Move, Stop, Turn
from robot.geometry import ROBOT_RADIUS_M, wrap_angle
from robot.planner import Emit, Observation, PlanStats
from robot.tasks import AllOf, Condition, Facing, InRegion, Near, Task, holds

GRID_M = 0.1
CLEARANCE_M = ROBOT_RADIUS_M + 0.15  # the sim's body is a box, not a disc: keep a margin
LOOKAHEAD_M = 1.0
CRUISE = 0.6
STEP_S = 0.5


@dataclass(frozen=True)
class _Goal:
    kind: str  # "pos" | "face" | "done"
    x: float = 0.0
    y: float = 0.0
    tol: float = 0.0


class ScriptedPlanner:
    mode = "scripted"

    def __init__(self, task: Task, *, verified: bool = True) -> None:
        self.task = task
        # verified=False stands in for a draft's own plans (the edge-only fallback in tests).
        self.verified = verified
        self._grid = _Grid(task)

    async def plan(self, obs: Observation, emit: Emit) -> PlanStats:
        for action in self.next_actions(obs):
            emit(action, self.verified)
        return PlanStats()

    def next_actions(self, obs: Observation) -> list:
        s = obs.state
        goal = self._goal(s.x, s.y, s.yaw)
        if goal.kind == "done":
            return [Done(action="done")] if s.stopped() else [Stop(action="stop")]
        if goal.kind == "face":
            err = wrap_angle(math.atan2(goal.y - s.y, goal.x - s.x) - s.yaw)
            return [Turn(action="turn", deg=round(math.degrees(err), 1)), Stop(action="stop")]
        wx, wy, remaining = self._grid.waypoint(s.x, s.y, goal.x, goal.y)
        err = wrap_angle(math.atan2(wy - s.y, wx - s.x) - s.yaw)
        if abs(err) > math.radians(40):
            return [Turn(action="turn", deg=round(math.degrees(err), 1))]
        vx = max(0.15, min(CRUISE, 0.8 * remaining))
        vyaw = max(-0.8, min(0.8, 2.0 * err))
        return [Move(action="move", vx=round(vx, 3), vy=0.0, vyaw=round(vyaw, 3), duration_s=STEP_S)]

    def _goal(self, x: float, y: float, yaw: float) -> _Goal:
        conditions = _flatten(self.task.success.condition)
        for c in conditions:  # positions first, in the order written
            if isinstance(c, Near | InRegion):
                goal = self._position_goal(c, x, y)
                if math.hypot(goal.x - x, goal.y - y) > goal.tol or not holds(c, self.task, x, y, yaw):
                    return goal
        for c in conditions:
            if isinstance(c, Facing):
                obj = self.task.object(c.facing)
                if abs(wrap_angle(math.atan2(obj.y - y, obj.x - x) - yaw)) > c.within_rad / 3:
                    return _Goal("face", obj.x, obj.y)
        return _Goal("done")

    def _position_goal(self, c: Near | InRegion, x: float, y: float) -> _Goal:
        if isinstance(c, InRegion):
            return _Goal("pos", c.region.x, c.region.y, 0.4 * c.region.radius)
        obj = self.task.object(c.near)
        dx, dy = x - obj.x, y - obj.y
        norm = math.hypot(dx, dy) or 1.0
        dx, dy = dx / norm, dy / norm
        want = 0.4 * c.within_m
        lo, hi = 0.0, 10.0  # the surface distance grows along a ray out of a convex body
        for _ in range(40):
            mid = (lo + hi) / 2
            if obj.surface_distance(obj.x + dx * mid, obj.y + dy * mid) < want:
                lo = mid
            else:
                hi = mid
        return _Goal("pos", obj.x + dx * hi, obj.y + dy * hi, 0.3 * c.within_m)


def _flatten(c: Condition) -> list[Condition]:
    return [x for sub in c.all for x in _flatten(sub)] if isinstance(c, AllOf) else [c]


class _Grid:
    """Occupancy of the obstacles inflated by the clearance, over the task's extent plus a margin."""

    def __init__(self, task: Task) -> None:
        xs = [task.start.x] + [b.x for b in [*task.objects, *task.obstacles]]
        ys = [task.start.y] + [b.y for b in [*task.objects, *task.obstacles]]
        self.x0, self.y0 = min(xs) - 3.0, min(ys) - 3.0
        self.nx = int((max(xs) + 3.0 - self.x0) / GRID_M) + 1
        self.ny = int((max(ys) + 3.0 - self.y0) / GRID_M) + 1
        self.blocked = {
            (i, j)
            for i in range(self.nx)
            for j in range(self.ny)
            if any(o.surface_distance(*self.center(i, j)) < CLEARANCE_M for o in task.obstacles)
        }

    def cell(self, x: float, y: float) -> tuple[int, int]:
        i = min(max(int(round((x - self.x0) / GRID_M)), 0), self.nx - 1)
        j = min(max(int(round((y - self.y0) / GRID_M)), 0), self.ny - 1)
        return i, j

    def center(self, i: int, j: int) -> tuple[float, float]:
        return self.x0 + i * GRID_M, self.y0 + j * GRID_M

    def waypoint(self, x: float, y: float, gx: float, gy: float) -> tuple[float, float, float]:
        """The farthest point of the path within the lookahead that is in sight; and the path's length."""
        path = self._astar(self.cell(x, y), self.cell(gx, gy))
        if not path:
            return gx, gy, math.hypot(gx - x, gy - y)
        points = [self.center(*c) for c in path[1:]] + [(gx, gy)]
        length = 0.0
        px, py = x, y
        for qx, qy in points:
            length += math.hypot(qx - px, qy - py)
            px, py = qx, qy
        best = points[0]
        for qx, qy in points:
            if math.hypot(qx - x, qy - y) > LOOKAHEAD_M:
                break
            if self._in_sight(x, y, qx, qy):
                best = (qx, qy)
        return best[0], best[1], length

    def _in_sight(self, x: float, y: float, qx: float, qy: float) -> bool:
        n = max(1, int(math.hypot(qx - x, qy - y) / (GRID_M / 2)))
        start = self.cell(x, y)
        for k in range(1, n + 1):
            c = self.cell(x + (qx - x) * k / n, y + (qy - y) * k / n)
            if c in self.blocked and c != start:
                return False
        return True

    def _astar(self, start: tuple[int, int], goal: tuple[int, int]) -> list[tuple[int, int]]:
        def h(c: tuple[int, int]) -> float:
            return math.hypot(c[0] - goal[0], c[1] - goal[1])

        frontier = [(h(start), 0.0, start)]
        came: dict[tuple[int, int], tuple[int, int] | None] = {start: None}
        cost = {start: 0.0}
        while frontier:
            _, g, cur = heapq.heappop(frontier)
            if cur == goal:
                break
            if g > cost[cur]:
                continue
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    if not (di or dj):
                        continue
                    nxt = (cur[0] + di, cur[1] + dj)
                    if not (0 <= nxt[0] < self.nx and 0 <= nxt[1] < self.ny) or nxt in self.blocked:
                        continue
                    ng = g + math.hypot(di, dj)
                    if ng < cost.get(nxt, math.inf):
                        cost[nxt], came[nxt] = ng, cur
                        heapq.heappush(frontier, (ng + h(nxt), ng, nxt))
        if goal not in came:
            return []
        path, c = [], goal
        while c is not None:
            path.append(c)
            c = came[c]
        return path[::-1]
