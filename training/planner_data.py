"""The planner's data set: the exact prompt `ModelPlanner` builds at each planning step and the teacher plan.

Scenes are the shipped tasks (start perturbed) and random scenes of the same five kinds (go to an object,
possibly behind; walk around a wall; go through a doorway; stop on a line; go to one object then face
another), seeded. Each scene is rolled out on ideal kinematics: plan from the pose, execute a random part of
the plan (all of it most often, as when the queue runs dry before the next plan) with execution noise,
plan again, until the teacher has nothing left to do. Every random scene is split by scene into `train` or
`heldout`; the shipped tasks' scenes are `shipped` and never trained on.

    python -m training.planner_data --out planner-data.jsonl --scenes 1500 --seed 0
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from robot.actions import Move, Turn
from robot.geometry import wrap_angle
from robot.interface import RobotState
from robot.perception import OraclePerception
from robot.planner import Observation, build_prompt
from robot.tasks import Task, perturbed_start, shipped_tasks
from training.planner_expert import PlanTeacher, plan_text

COLORS = ("red", "green", "blue", "yellow", "orange", "purple", "black")
SHAPES = ("sphere", "box", "cylinder")
MAX_STEPS = 5
PROMPT_STYLE = "compact"  # what ModelPlanner sends a fine-tuned planner model
HELDOUT_EVERY = 10  # scene k is held out when k % 10 == 0


def _object(rng: random.Random, name_taken: set[str], x: float, y: float) -> dict[str, Any]:
    while True:
        color, shape = rng.choice(COLORS), rng.choice(SHAPES)
        word = {"sphere": "ball", "box": "box", "cylinder": "cylinder"}[shape]
        name = f"{color} {word}"
        if name not in name_taken:
            name_taken.add(name)
            break
    obj: dict[str, Any] = {"name": name, "shape": shape, "color": color, "x": round(x, 2), "y": round(y, 2)}
    if shape == "box":
        obj["size"] = [0.2, 0.2, 0.2]
    else:
        obj["size"] = 0.15
        if shape == "cylinder":
            obj["height"] = 0.5
    return obj


def _polar(rng: random.Random, r: tuple[float, float], deg: tuple[float, float]) -> tuple[float, float]:
    d, a = rng.uniform(*r), math.radians(rng.uniform(*deg))
    return d * math.cos(a), d * math.sin(a)


def _distractors(rng: random.Random, taken: set[str], n: int) -> list[dict[str, Any]]:
    return [_object(rng, taken, *_polar(rng, (1.5, 4.0), (-180, 180))) for _ in range(n)]


def random_scene(rng: random.Random, index: int) -> Task:
    """One random task file of a kind the shipped tasks have, with a templated instruction."""
    kind = rng.choice(("object", "object", "behind", "wall", "door", "line", "two-step"))
    taken: set[str] = set()
    obstacles: list[dict[str, Any]] = []
    if kind in ("object", "behind"):
        span = (-60, 60) if kind == "object" else (100, 260)
        goal = _object(rng, taken, *_polar(rng, (1.2, 4.0), span))
        objects = [goal, *_distractors(rng, taken, rng.randint(0, 2))]
        instruction = rng.choice(
            (
                f"Walk to the {goal['name']} and stop next to it.",
                f"Go to the {goal['name']} and stop.",
                f"Turn around until you see the {goal['name']}, then walk to it and stop.",
            )
            if kind == "behind"
            else (f"Walk to the {goal['name']} and stop next to it.", f"Go to the {goal['name']} and stop.")
        )
        success: dict[str, Any] = {"near": goal["name"], "within_m": 0.5, "time_limit_s": 60}
    elif kind in ("wall", "door"):
        dist = rng.uniform(2.5, 4.0)
        goal = _object(rng, taken, dist, rng.uniform(-0.5, 0.5))
        objects = [goal]
        wall_x = round(rng.uniform(1.1, dist - 1.0), 2)
        if kind == "wall":
            half = rng.uniform(0.4, 0.9)
            obstacles = [
                {"shape": "box", "x": wall_x, "y": round(rng.uniform(-0.3, 0.3), 2), "size": [0.1, half, 0.4]}
            ]
            instruction = (
                f"Walk around the wall in front of you to the {goal['name']} without touching the wall."
            )
        else:
            gap_c, gap = rng.uniform(-0.6, 0.6), rng.uniform(0.9, 1.3)
            lo, hi = gap_c - gap / 2, gap_c + gap / 2
            obstacles = [
                {"shape": "box", "x": wall_x, "y": round(lo - 1.4, 2), "size": [0.1, 1.4, 0.5]},
                {"shape": "box", "x": wall_x, "y": round(hi + 1.0, 2), "size": [0.1, 1.0, 0.5]},
            ]
            instruction = f"Go through the doorway in the wall and stop at the {goal['name']} behind it."
        success = {"near": goal["name"], "within_m": 0.5, "time_limit_s": 60, "max_collisions": 0}
    elif kind == "line":
        x, y = _polar(rng, (1.5, 3.5), (-25, 25))
        objects = [
            {
                "name": "white line",
                "shape": "box",
                "color": "white",
                "x": round(x, 2),
                "y": round(y, 2),
                "size": [0.03, 1.0, 0.005],
            }
        ]
        instruction = rng.choice(("Walk forward and stop on the white line.", "Stop on the white line."))
        success = {"region": {"x": round(x, 2), "y": round(y, 2), "radius": 0.3}, "time_limit_s": 40}
    else:
        first = _object(rng, taken, *_polar(rng, (1.2, 3.0), (-70, 70)))
        second = _object(rng, taken, *_polar(rng, (1.2, 3.0), (-120, 120)))
        objects = [first, second]
        instruction = f"Walk to the {first['name']}, then turn to face the {second['name']}."
        success = {
            "all": [{"near": first["name"], "within_m": 0.6}, {"facing": second["name"], "within_deg": 15}],
            "time_limit_s": 60,
        }
    start = {"x": 0.0, "y": 0.0, "yaw_deg": round(rng.uniform(-15, 15), 1)}
    return Task.model_validate(
        {
            "name": f"random-{kind}-{index}",
            "instruction": instruction,
            "start": start,
            "objects": objects,
            "obstacles": obstacles,
            "success": success,
        }
    )


def _state(x: float, y: float, yaw: float, speed: float, posture: str, t: float) -> RobotState:
    mode = "move" if speed > 0 else "balance_stand"
    return RobotState(x, y, yaw, speed, 0.0, 0.0, posture, mode, 0, t)  # type: ignore[arg-type]


def _execute(
    actions: list[Any], x: float, y: float, yaw: float, rng: random.Random
) -> tuple[float, float, float, float, float]:
    """Ideal kinematics for a random part of `actions`, with execution noise: (x, y, yaw, speed, seconds)."""
    fraction = 1.0 if rng.random() < 0.5 else rng.uniform(0.3, 1.0)
    total = sum(a.duration_s for a in actions if isinstance(a, Move)) or 1.0
    budget = fraction * total
    speed, spent = 0.0, 0.0
    for a in actions:
        if isinstance(a, Turn):
            yaw = wrap_angle(yaw + math.radians(a.deg) + math.radians(rng.gauss(0, 3)))
            spent += abs(a.deg) / 60
        elif isinstance(a, Move):
            run = min(a.duration_s, budget)
            budget -= run
            d = a.vx * run * rng.uniform(0.8, 1.0)  # the Go2's slew eats the start of a move
            x, y = x + d * math.cos(yaw), y + d * math.sin(yaw)
            spent += run
            if budget <= 0:
                speed = a.vx if run < a.duration_s else 0.0
                break
    return x, y, yaw, speed, spent


def rollout(task: Task, rng: random.Random) -> Iterator[tuple[int, str, str]]:
    """(step, prompt, plan text) at each planning step of one scene."""
    teacher, perception = PlanTeacher(task), OraclePerception(task)
    x, y, yaw, speed, t = task.start.x, task.start.y, task.start.yaw, 0.0, 0.0
    for step in range(MAX_STEPS):
        state = _state(x, y, yaw, speed, "standing", t)
        plan = teacher.plan(state)
        if plan is None:
            return
        obs = Observation(
            t=t, instruction=task.instruction, state=state, scene=perception.perceive(None, state)
        )
        yield step, build_prompt(obs, style=PROMPT_STYLE), plan_text(plan)
        x, y, yaw, speed, spent = _execute(plan, x, y, yaw, rng)
        t += spent + rng.uniform(1.0, 6.0)  # the next plan's own latency


def _scene_key(task: Task) -> str:
    return json.dumps([task.to_file()["objects"], task.to_file().get("obstacles", [])], sort_keys=True)


def build_dataset(
    scenes: int, seed: int, shipped_seeds: int = 8, progress: bool = True
) -> list[dict[str, Any]]:
    from rich.progress import track

    rng = random.Random(seed)
    shipped = shipped_tasks()
    shipped_keys = {_scene_key(t) for t in shipped}
    rows: list[dict[str, Any]] = []
    for task in shipped:  # evaluation only: the exact scenes the bench runs
        for s in range(shipped_seeds):
            for step, prompt, plan in rollout(
                perturbed_start(task, s), random.Random(f"{seed}-{task.name}-{s}")
            ):
                rows.append(
                    {
                        "split": "shipped",
                        "scene": f"{task.name}-s{s}",
                        "step": step,
                        "prompt": prompt,
                        "plan": plan,
                    }
                )
    for k in track(range(scenes), description="Planner scenes", disable=not progress):
        task = random_scene(rng, k)
        if _scene_key(task) in shipped_keys:
            continue
        split = "heldout" if k % HELDOUT_EVERY == 0 else "train"
        for step, prompt, plan in rollout(task, rng):
            rows.append({"split": split, "scene": task.name, "step": step, "prompt": prompt, "plan": plan})
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("planner-data.jsonl"))
    p.add_argument("--scenes", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rows = build_dataset(args.scenes, args.seed)
    with args.out.open("w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "heldout", "shipped")}
    print(f"{len(rows)} planning steps to {args.out}: {counts}")


if __name__ == "__main__":
    main()
