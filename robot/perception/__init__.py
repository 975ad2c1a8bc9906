"""Perception: camera frame (+ state) → structured scene description: `oracle`, or learned `ann` / `snn`.

The learned models (`robot.perception.models`, `.train`, `.prune`, ...) import torch and spikingjelly, so
this door exports only what the daemon needs; `make_perception` loads a learned model when asked for one.
"""

from robot.perception.factory import PERCEPTIONS, make_perception
from robot.perception.oracle import OraclePerception
from robot.perception.scene import Perception, SceneDescription, SeenObject

__all__ = [
    "PERCEPTIONS",
    "OraclePerception",
    "Perception",
    "SceneDescription",
    "SeenObject",
    "make_perception",
]
