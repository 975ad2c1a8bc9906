"""Label heads of the learned perception: what the oracle says, as fixed-size class targets, and back.

Per colour (each of the 8 task-file colours): the shape of the nearest visible object of that colour
(absent / sphere / box / cylinder), its bearing bin and its distance bin (ignored, -1, when absent); for the
frame: obstacle ahead and free direction. Labels come from `OraclePerception` itself (with the sim camera's
field of view), so labels and the oracle agree by construction.
"""

from __future__ import annotations

import math
from typing import get_args

import numpy as np
import torch

from robot.interface import RobotState
from robot.perception.oracle import OraclePerception
from robot.perception.render import CAMERA_HFOV_RAD
from robot.perception.scene import BearingBin, Direction, DistanceBin, SceneDescription, SeenObject
from robot.perception.scenes import COLORS, SHAPES
from robot.tasks import Task

BEARINGS: tuple[str, ...] = get_args(BearingBin)
DISTANCES: tuple[str, ...] = get_args(DistanceBin)
DIRECTIONS: tuple[str, ...] = get_args(Direction)
SHAPE_CLASSES = ("absent", *SHAPES)
HEADS = ("shape", "bearing", "distance", "obstacle_ahead", "free_direction")
IGNORE = -1
# Bin centres: what a learned model reports as bearing_rad / distance_m (it only knows the bin).
BEARING_CENTRE_DEG = {"far left": 40.0, "left": 23.0, "ahead": 0.0, "right": -23.0, "far right": -40.0}
DISTANCE_CENTRE_M = {"near": 0.6, "mid": 2.0, "far": 4.5}
SHAPE_NAME = {"sphere": "ball", "box": "box", "cylinder": "cylinder"}
# Output layout of every model: logits for these groups, concatenated.
N_COLORS = len(COLORS)
HEAD_SIZES = {
    "shape": N_COLORS * len(SHAPE_CLASSES),
    "bearing": N_COLORS * len(BEARINGS),
    "distance": N_COLORS * len(DISTANCES),
    "obstacle_ahead": 2,
    "free_direction": len(DIRECTIONS),
}
N_OUTPUTS = sum(HEAD_SIZES.values())
# Label vector: shape[8], bearing[8], distance[8], obstacle_ahead, free_direction.
N_LABELS = 3 * N_COLORS + 2


def oracle_scene(task: Task, x: float, y: float, yaw: float) -> SceneDescription:
    state = RobotState(x, y, yaw, 0.0, 0.0, 0.0, "standing", "move", 0, 0.0)
    return OraclePerception(task, hfov_rad=CAMERA_HFOV_RAD).perceive(None, state)


def encode(scene: SceneDescription) -> np.ndarray:
    """The label vector (int64, N_LABELS) of a scene description; the nearest object wins per colour."""
    out = np.full(N_LABELS, IGNORE, dtype=np.int64)
    out[:N_COLORS] = 0
    for obj in sorted(scene.objects, key=lambda o: o.distance_m, reverse=True):
        c = COLORS.index(obj.color)
        out[c] = SHAPE_CLASSES.index(obj.shape)
        out[N_COLORS + c] = BEARINGS.index(obj.bearing)
        out[2 * N_COLORS + c] = DISTANCES.index(obj.distance)
    out[3 * N_COLORS] = int(scene.obstacle_ahead)
    out[3 * N_COLORS + 1] = DIRECTIONS.index(scene.free_direction)
    return out


def split_logits(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """(B, N_OUTPUTS) → per head (B, groups, classes): shape/bearing/distance have 8 groups, others 1."""
    out, i = {}, 0
    for head, size in HEAD_SIZES.items():
        part = logits[:, i : i + size]
        groups = N_COLORS if head in ("shape", "bearing", "distance") else 1
        out[head] = part.reshape(logits.shape[0], groups, size // groups)
        i += size
    return out


def split_labels(labels: torch.Tensor) -> dict[str, torch.Tensor]:
    n = N_COLORS
    return {
        "shape": labels[:, :n],
        "bearing": labels[:, n : 2 * n],
        "distance": labels[:, 2 * n : 3 * n],
        "obstacle_ahead": labels[:, 3 * n : 3 * n + 1],
        "free_direction": labels[:, 3 * n + 1 : 3 * n + 2],
    }


def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over heads of the mean cross-entropy (ignored entries left out)."""
    total = logits.new_zeros(())
    preds, targets = split_logits(logits), split_labels(labels)
    for head in HEADS:
        p, t = preds[head], targets[head]
        total = total + torch.nn.functional.cross_entropy(
            p.reshape(-1, p.shape[-1]), t.reshape(-1), ignore_index=IGNORE
        )
    return total


def head_correct(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, tuple[int, int]]:
    """Per head: (correct, counted) over the batch; bearing/distance count only where the object is seen."""
    preds, targets = split_logits(logits), split_labels(labels)
    out = {}
    for head in HEADS:
        t = targets[head]
        valid = t != IGNORE
        hit = (preds[head].argmax(-1) == t) & valid
        out[head] = (int(hit.sum()), int(valid.sum()))
    return out


def decode(logits: torch.Tensor, stamp: float, task: Task | None = None) -> SceneDescription:
    """One frame's logits (N_OUTPUTS,) → a scene description; objects get the task's names when colour and
    shape match, or the colour alone when only one task object has it."""
    heads = {k: v[0] for k, v in split_logits(logits.reshape(1, -1)).items()}
    names = {(o.color, o.shape): o.name for o in task.objects} if task is not None else {}
    colors = [o.color for o in task.objects] if task is not None else []
    # the instruction's object of a colour no other object has is named even when the shape guess is off
    by_color = (
        {o.color: o.name for o in task.objects if colors.count(o.color) == 1} if task is not None else {}
    )
    objects = []
    for c, color in enumerate(COLORS):
        shape = SHAPE_CLASSES[int(heads["shape"][c].argmax())]
        if shape == "absent":
            continue
        bearing = BEARINGS[int(heads["bearing"][c].argmax())]
        distance = DISTANCES[int(heads["distance"][c].argmax())]
        objects.append(
            SeenObject(
                name=names.get((color, shape)) or by_color.get(color) or f"{color} {SHAPE_NAME[shape]}",
                shape=shape,
                color=color,
                bearing=bearing,  # type: ignore[arg-type]
                distance=distance,  # type: ignore[arg-type]
                bearing_rad=round(math.radians(BEARING_CENTRE_DEG[bearing]), 3),
                distance_m=DISTANCE_CENTRE_M[distance],
            )
        )
    return SceneDescription(
        stamp=stamp,
        objects=objects,
        obstacle_ahead=bool(heads["obstacle_ahead"][0].argmax()),
        free_direction=DIRECTIONS[int(heads["free_direction"][0].argmax())],  # type: ignore[arg-type]
    )
