"""`scene-follow`: a deterministic planner that sees the world only through the scene description.

The scripted planner reads the task's ground truth, so perception cannot change what it does; this one
reads the target's bearing and distance bins, obstacle-ahead and free direction from `obs.scene` (oracle or
learned alike) and the robot's own state, which makes it the planner for comparing perceptions. It handles
`near` goals (the first `near` of the success condition): search by turning, steer by bearing bin, detour
toward the free direction when an obstacle is ahead, creep when the target is near, stop.
"""

from __future__ import annotations

from robot.actions import Move, Stop, Turn
from robot.perception.scene import SceneDescription, SeenObject
from robot.planner import Emit, Observation, PlanStats
from robot.tasks import AllOf, Condition, Near, Task

TURN_DEG = {"far left": 30.0, "left": 15.0, "ahead": 0.0, "right": -15.0, "far right": -30.0}
SPEED = {"far": 0.6, "mid": 0.45, "near": 0.25}
DETOUR_DEG = {"left": 45.0, "right": -45.0, "back": 150.0, "ahead": 0.0}
SEARCH_DEG = 40.0
STEP_S = 0.5
MEMORY_S = 2.0  # a near target below the camera's view is still ahead for this long
EXPLORE_AFTER = 9  # search turns (one full turn) without seeing the target, then walk on and look again


def _near_goal(condition: Condition) -> Near | None:
    if isinstance(condition, Near):
        return condition
    if isinstance(condition, AllOf):
        for c in condition.all:
            if (goal := _near_goal(c)) is not None:
                return goal
    return None


class SceneFollowPlanner:
    mode = "scene-follow"

    def __init__(self, task: Task) -> None:
        goal = _near_goal(task.success.condition)
        if goal is None:
            raise ValueError(f"scene-follow plans `near` goals; task {task.name!r} has none")
        self.target = task.object(goal.near)
        self._last_near_t = -1e9
        self._search_turns = 0

    async def plan(self, obs: Observation, emit: Emit) -> PlanStats:
        for action in self.next_actions(obs):
            emit(action, True)
        return PlanStats()

    def _seen(self, scene: SceneDescription | None) -> SeenObject | None:
        if scene is None:
            return None
        for o in scene.objects:
            if o.name == self.target.name:
                return o
        return None

    def next_actions(self, obs: Observation) -> list:
        scene, seen = obs.scene, self._seen(obs.scene)
        if seen is None:
            if obs.t - self._last_near_t < MEMORY_S:  # it was near and ahead: it went below the view
                return [Move(action="move", vx=SPEED["near"], duration_s=STEP_S), Stop(action="stop")]
            if scene is not None and scene.obstacle_ahead:
                return [Turn(action="turn", deg=DETOUR_DEG[scene.free_direction])]
            self._search_turns += 1
            if self._search_turns > EXPLORE_AFTER:  # hidden (behind something): walk on, then look again
                self._search_turns = 0
                return [Move(action="move", vx=SPEED["mid"], duration_s=3 * STEP_S)]
            return [Turn(action="turn", deg=SEARCH_DEG)]
        self._search_turns = 0
        turn = TURN_DEG[seen.bearing]
        if seen.distance == "near" and seen.bearing == "ahead":
            self._last_near_t = obs.t
        if scene is not None and scene.obstacle_ahead and seen.distance != "near":
            detour = DETOUR_DEG[scene.free_direction]
            return [
                Turn(action="turn", deg=detour),
                Move(action="move", vx=SPEED["mid"], duration_s=2 * STEP_S),
            ]
        if abs(turn) >= 30:
            return [Turn(action="turn", deg=turn)]
        vyaw = max(-0.8, min(0.8, turn / 30.0))
        move = Move(action="move", vx=SPEED[seen.distance], vyaw=round(vyaw, 3), duration_s=STEP_S)
        return [move, Stop(action="stop")] if seen.distance == "near" else [move]
