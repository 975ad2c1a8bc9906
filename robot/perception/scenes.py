"""Random scenes of the task-file schema and robot poses inside them, for rendering perception data.

Seeded: scene `i` of seed `s` is the same on every machine (one `random.Random` per scene).
"""

from __future__ import annotations

import math
import random
from typing import get_args

from robot.geometry import ROBOT_RADIUS_M, bearing_to
from robot.tasks import Color, Shape, Task

COLORS: tuple[str, ...] = get_args(Color)
SHAPES: tuple[str, ...] = get_args(Shape)


def random_scene(seed: int, index: int) -> Task:
    """One random task-file scene: 1–3 objects (distinct colours), 0–2 grey obstacles ahead of the start."""
    rng = random.Random(f"{seed}:{index}")
    objects = []
    for color in rng.sample(COLORS, rng.randint(1, 3)):
        shape = rng.choice(SHAPES)
        body: dict = {"shape": shape, "color": color, "x": rng.uniform(0.8, 6.0), "y": rng.uniform(-3.0, 3.0)}
        if shape == "box":
            h = round(rng.uniform(0.1, 0.3), 2)
            body |= {"size": [h, h, h], "yaw_deg": round(rng.uniform(0, 90))}
        else:
            body["size"] = round(rng.uniform(0.1, 0.3), 2)
        name = {"sphere": "ball", "box": "box", "cylinder": "cylinder"}[shape]
        objects.append({"name": f"{color} {name}", **body})
    obstacles = []
    for _ in range(rng.randint(0, 2)):
        if rng.random() < 0.5:
            size = [round(rng.uniform(0.05, 0.3), 2), round(rng.uniform(0.3, 1.2), 2), 0.5]
            obstacles.append(
                {
                    "shape": "box",
                    "x": rng.uniform(0.8, 4.0),
                    "y": rng.uniform(-2, 2),
                    "size": size,
                    "yaw_deg": round(rng.uniform(-60, 60)),
                }
            )
        else:
            obstacles.append(
                {
                    "shape": "cylinder",
                    "x": rng.uniform(0.8, 4.0),
                    "y": rng.uniform(-2, 2),
                    "size": round(rng.uniform(0.1, 0.4), 2),
                    "height": 1.0,
                }
            )
    return Task.model_validate(
        {
            "name": f"random-{seed}-{index}",
            "instruction": f"Walk to the {objects[0]['name']} and stop next to it.",
            "objects": objects,
            "obstacles": obstacles,
            "success": {"near": objects[0]["name"], "within_m": 0.5},
        }
    )


def random_poses(task: Task, seed: int, count: int) -> list[tuple[float, float, float]]:
    """`count` robot poses (x, y, yaw) clear of every body; most look roughly at an object (with jitter)."""
    rng = random.Random(f"{seed}:{task.name}:poses")
    bodies = [*task.objects, *task.obstacles]
    poses: list[tuple[float, float, float]] = []
    while len(poses) < count:
        x, y = rng.uniform(-1.0, 4.0), rng.uniform(-2.0, 2.0)
        if any(b.surface_distance(x, y) < ROBOT_RADIUS_M for b in bodies):
            continue
        if task.objects and rng.random() < 0.7:
            obj = rng.choice(task.objects)
            yaw = bearing_to(x, y, 0.0, obj.x, obj.y) + rng.uniform(-0.8, 0.8)
        else:
            yaw = rng.uniform(-math.pi, math.pi)
        poses.append((x, y, math.atan2(math.sin(yaw), math.cos(yaw))))
    return poses
