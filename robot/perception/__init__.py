"""Perception: camera frame (+ state) → structured scene description. `oracle` now; `ann`/`snn` later."""

from robot.perception.oracle import OraclePerception
from robot.perception.scene import Perception, SceneDescription, SeenObject

__all__ = ["OraclePerception", "Perception", "SceneDescription", "SeenObject"]
