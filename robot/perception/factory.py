"""The perception a daemon runs, by name; learned models (torch, spikingjelly) load only when asked for."""

from __future__ import annotations

from robot.perception.oracle import OraclePerception
from robot.perception.scene import Perception
from robot.tasks import Task

PERCEPTIONS = ("oracle", "ann", "snn", "snn_pruned")


def make_perception(name: str, task: Task, threads: int = 1) -> Perception:
    """`oracle` (the simulator's ground truth) or a shipped learned model reading the head camera."""
    if name == "oracle":
        return OraclePerception(task)
    if name not in PERCEPTIONS:
        raise ValueError(f"unknown perception {name!r}; one of {', '.join(PERCEPTIONS)}")
    from robot.perception.learned import LearnedPerception
    from robot.perception.store import load_shipped

    return LearnedPerception(load_shipped(name), name, task, threads=threads)
