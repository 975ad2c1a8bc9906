"""Task files (DESIGN.md, "Task files"): pydantic models, loading, the shipped tasks and success checks.

Files are written by people and use degrees; everything derived here (`yaw`, `within_rad`, distances) is
SI: metres, seconds, radians.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from robot.geometry import bearing_to, distance_to_surface, wrap_angle

Shape = Literal["sphere", "box", "cylinder"]
Color = Literal["red", "green", "blue", "yellow", "white", "black", "orange", "purple"]
COLOR_RGB: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.1, 0.1),
    "green": (0.1, 0.7, 0.2),
    "blue": (0.1, 0.25, 0.9),
    "yellow": (0.95, 0.85, 0.1),
    "white": (0.95, 0.95, 0.95),
    "black": (0.05, 0.05, 0.05),
    "orange": (1.0, 0.5, 0.05),
    "purple": (0.55, 0.15, 0.7),
}
DEFAULT_TIME_LIMIT_S = 60.0

_STRICT = ConfigDict(extra="forbid", frozen=True)
Positive = Annotated[float, Field(gt=0)]


class Start(BaseModel):
    model_config = _STRICT
    x: float = 0.0
    y: float = 0.0
    yaw_deg: float = 0.0

    @property
    def yaw(self) -> float:
        return math.radians(self.yaw_deg)


class Body(BaseModel):
    """A sphere or cylinder (`size` = radius, cylinders may add `height`) or a box (`size` = half-extents)."""

    model_config = _STRICT
    shape: Shape
    x: float
    y: float
    yaw_deg: float = 0.0
    size: Positive | tuple[Positive, Positive, Positive]
    height: Positive | None = None
    color: Color | None = None

    @model_validator(mode="after")
    def _size_matches_shape(self) -> Body:
        if self.shape == "box" and not isinstance(self.size, tuple):
            raise ValueError("a box's size is its three half-extents [x, y, z]")
        if self.shape != "box" and isinstance(self.size, tuple):
            raise ValueError(f"a {self.shape}'s size is its radius")
        if self.height is not None and self.shape != "cylinder":
            raise ValueError("only cylinders take a height")
        return self

    @property
    def yaw(self) -> float:
        return math.radians(self.yaw_deg)

    @property
    def half_height(self) -> float:
        if isinstance(self.size, tuple):
            return self.size[2]
        if self.shape == "cylinder":
            return (self.height or 2 * self.size) / 2
        return self.size

    def surface_distance(self, x: float, y: float) -> float:
        """Distance in the ground plane from (x, y) to this body's footprint (0 inside)."""
        return distance_to_surface(self.shape, self.x, self.y, self.yaw, self.size, x, y)


class SceneObject(Body):
    name: str = Field(min_length=1)
    color: Color


class Obstacle(Body):
    name: str | None = None


class Region(BaseModel):
    model_config = _STRICT
    x: float
    y: float
    radius: Positive


class Near(BaseModel):
    model_config = _STRICT
    near: str
    within_m: Positive


class InRegion(BaseModel):
    model_config = _STRICT
    region: Region


class Facing(BaseModel):
    model_config = _STRICT
    facing: str
    within_deg: Annotated[float, Field(gt=0, le=180)]

    @property
    def within_rad(self) -> float:
        return math.radians(self.within_deg)


class AllOf(BaseModel):
    model_config = _STRICT
    all: list[Condition] = Field(min_length=1)


Condition = Near | InRegion | Facing | AllOf
AllOf.model_rebuild()
_CONDITION_KEYS = ("near", "within_m", "region", "facing", "within_deg", "all")


class Success(BaseModel):
    """One condition plus, at the same level, `time_limit_s` and `max_collisions`."""

    model_config = _STRICT
    condition: Condition
    time_limit_s: Positive = DEFAULT_TIME_LIMIT_S
    max_collisions: Annotated[int, Field(ge=0)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _split(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "condition" in data:
            return data
        condition = {k: v for k, v in data.items() if k in _CONDITION_KEYS}
        rest = {k: v for k, v in data.items() if k not in _CONDITION_KEYS}
        return {"condition": condition, **rest}

    def to_file(self) -> dict[str, Any]:
        out = self.condition.model_dump(mode="json")
        out["time_limit_s"] = self.time_limit_s
        if self.max_collisions is not None:
            out["max_collisions"] = self.max_collisions
        return out


class Task(BaseModel):
    model_config = _STRICT
    name: str = Field(min_length=1)
    instruction: str = Field(min_length=1)
    start: Start = Start()
    objects: list[SceneObject] = []
    obstacles: list[Obstacle] = []
    success: Success

    @model_validator(mode="after")
    def _names_resolve(self) -> Task:
        names = [o.name for o in self.objects]
        if len(set(names)) != len(names):
            raise ValueError("object names must be unique")
        for ref in _referenced_names(self.success.condition):
            if ref not in names:
                raise ValueError(f"success condition names {ref!r}, which is not an object of the task")
        return self

    def object(self, name: str) -> SceneObject:
        for obj in self.objects:
            if obj.name == name:
                return obj
        raise KeyError(name)

    def to_file(self) -> dict[str, Any]:
        """The task as a task file (degrees, the DESIGN.md shape)."""
        data = self.model_dump(mode="json", exclude={"success"}, exclude_none=True)
        data["success"] = self.success.to_file()
        return data


def _referenced_names(condition: Condition) -> list[str]:
    if isinstance(condition, Near):
        return [condition.near]
    if isinstance(condition, Facing):
        return [condition.facing]
    if isinstance(condition, AllOf):
        return [n for c in condition.all for n in _referenced_names(c)]
    return []


def holds(condition: Condition, task: Task, x: float, y: float, yaw: float) -> bool:
    """Whether `condition` holds for the robot at (x, y, yaw) in `task`'s scene (ground truth)."""
    if isinstance(condition, Near):
        return task.object(condition.near).surface_distance(x, y) <= condition.within_m
    if isinstance(condition, InRegion):
        r = condition.region
        return math.hypot(x - r.x, y - r.y) <= r.radius
    if isinstance(condition, Facing):
        obj = task.object(condition.facing)
        return abs(wrap_angle(bearing_to(x, y, yaw, obj.x, obj.y))) <= condition.within_rad
    return all(holds(c, task, x, y, yaw) for c in condition.all)


def perturbed_start(task: Task, seed: int) -> Task:
    """Seed 0: the task as written; seed N > 0: the start moved by up to 0.2 m and turned by up to 15°
    (deterministic in N), for running a task several times."""
    if seed == 0:
        return task
    import random

    rng = random.Random(seed)
    start = Start(
        x=task.start.x + rng.uniform(-0.2, 0.2),
        y=task.start.y + rng.uniform(-0.2, 0.2),
        yaw_deg=task.start.yaw_deg + rng.uniform(-15, 15),
    )
    return task.model_copy(update={"start": start})


def load_task(source: str | Path) -> Task:
    """A shipped task by name, or any task file by path."""
    path = Path(source)
    if path.suffix == ".json" or path.exists():
        if not path.exists():
            raise FileNotFoundError(f"no task file {path}")
        return Task.model_validate_json(path.read_text())
    shipped = _shipped_files()
    if str(source) not in shipped:
        raise KeyError(f"no shipped task {source!r}; shipped: {', '.join(sorted(shipped))}")
    return Task.model_validate_json(shipped[str(source)].read_text())


def shipped_tasks() -> list[Task]:
    """The shipped tasks, easiest first (their files are numbered by difficulty)."""
    files = sorted(resources.files("robot.task_files").iterdir(), key=lambda p: p.name)
    return [Task.model_validate_json(p.read_text()) for p in files if p.name.endswith(".json")]


def _shipped_files() -> dict[str, Any]:
    out = {}
    for p in resources.files("robot.task_files").iterdir():
        if p.name.endswith(".json"):
            out[json.loads(p.read_text())["name"]] = p
    return out
