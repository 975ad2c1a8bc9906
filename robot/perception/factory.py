"""The perception a daemon runs, by name; learned models (torch, spikingjelly) load only when asked for."""

from __future__ import annotations

from robot.perception.oracle import OraclePerception
from robot.perception.scene import Perception
from robot.tasks import Task

PERCEPTIONS = ("oracle", "ann", "snn", "snn_pruned", "snn+adaptive", "ann+adaptive")


def make_perception(name: str, task: Task, threads: int = 1) -> Perception:
    """`oracle` (the simulator's ground truth) or a shipped learned model reading the head camera;
    `NAME+adaptive`: its perception rate follows the robot's motion (`robot.perception.adaptive`)."""
    if name == "oracle":
        return OraclePerception(task)
    if name not in PERCEPTIONS:
        raise ValueError(f"unknown perception {name!r}; one of {', '.join(PERCEPTIONS)}")
    from robot.perception.learned import LearnedPerception
    from robot.perception.store import load_shipped

    model_name, _, policy = name.partition("+")
    seer = LearnedPerception(load_shipped(model_name), model_name, task, threads=threads)
    if policy == "adaptive":
        from robot.perception.adaptive import ActionAwarePerception

        return ActionAwarePerception(seer)
    return seer
