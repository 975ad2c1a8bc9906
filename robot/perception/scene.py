"""The structured scene description the planner reads (DESIGN.md, "Perception"), and the perception seam."""

from __future__ import annotations

import math
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict

from robot.interface import CameraFrame, RobotState

BearingBin = Literal["far left", "left", "ahead", "right", "far right"]
DistanceBin = Literal["near", "mid", "far"]
Direction = Literal["ahead", "left", "right", "back"]
CAMERA_HFOV_RAD = math.radians(120)


class SeenObject(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    shape: str
    color: str
    bearing: BearingBin
    distance: DistanceBin
    bearing_rad: float
    distance_m: float


class SceneDescription(BaseModel):
    """Per visible object its class and colour, bearing and distance bins; an obstacle ahead; a free way."""

    model_config = ConfigDict(frozen=True)
    stamp: float
    objects: list[SeenObject]
    obstacle_ahead: bool
    free_direction: Direction

    def to_text(self) -> str:
        if self.objects:
            seen = "; ".join(
                f"{o.name} ({o.color} {o.shape}) {o.bearing}, {o.distance} "
                f"({math.degrees(o.bearing_rad):+.0f} deg, {o.distance_m:.1f} m)"
                for o in self.objects
            )
        else:
            seen = "nothing"
        ahead = "an obstacle is ahead" if self.obstacle_ahead else "the way ahead is clear"
        return f"Visible: {seen}. {ahead}; free direction: {self.free_direction}."


class Perception(Protocol):
    """Turns the latest camera frame (and the robot's state) into a scene description.

    `oracle` reads the simulator's ground truth; learned models (`ann`, `snn`) read `frame`.
    """

    name: str

    def perceive(self, frame: CameraFrame | None, state: RobotState) -> SceneDescription: ...


def bearing_bin(bearing: float) -> BearingBin:
    deg = math.degrees(bearing)
    if deg > 35:
        return "far left"
    if deg > 12:
        return "left"
    if deg >= -12:
        return "ahead"
    return "right" if deg >= -35 else "far right"


def distance_bin(distance: float) -> DistanceBin:
    if distance < 1.0:
        return "near"
    return "mid" if distance < 3.0 else "far"
