"""The robot side: interface and backends, tasks, safety gate, planner, daemon, status server, episode logs.

The planner's model modes go through the edge–cloud decoder behind `PlanBackend`; the CLI
(`eespec/robot_cli.py`) wires the decoder in. This package never imports `cloud_server`.
"""

from robot.actions import PLAN_SCHEMA, PlanError, StreamingPlanParser, parse_plan
from robot.backends.fake import FakeRobot
from robot.backends.go2_model import Go2Params
from robot.daemon import DaemonConfig, EpisodeResult, RobotDaemon
from robot.episode_log import EpisodeLog, read_episode
from robot.executor import Executor, QueuedAction
from robot.interface import CameraFrame, Code, RobotInterface, RobotState
from robot.link import HttpHealthPing, LinkMonitor
from robot.perception import OraclePerception, Perception, SceneDescription
from robot.planner import Completion, ModelPlanner, Observation, PlanBackend, Planner, PlanStats, build_prompt
from robot.safety import Decision, Limits, Proposal, SafetyGate
from robot.scripted import ScriptedPlanner
from robot.tasks import Task, holds, load_task, shipped_tasks

BACKENDS = ("fake", "sim", "unitree")


def make_robot(backend: str, task: Task, **kwargs) -> RobotInterface:
    """A backend by name; `sim` and `unitree` import their libraries only when asked for."""
    if backend == "fake":
        return FakeRobot(task, **kwargs)
    if backend == "sim":
        from robot.backends.sim import SimRobot

        return SimRobot(task, **kwargs)
    if backend == "unitree":
        raise NotImplementedError(
            "the unitree backend is not available: Unitree's SDK2 Python client is not published on PyPI"
        )
    raise ValueError(f"unknown backend {backend!r}; one of {', '.join(BACKENDS)}")


__all__ = [
    "BACKENDS",
    "PLAN_SCHEMA",
    "CameraFrame",
    "Code",
    "Completion",
    "DaemonConfig",
    "Decision",
    "EpisodeLog",
    "EpisodeResult",
    "Executor",
    "FakeRobot",
    "Go2Params",
    "HttpHealthPing",
    "Limits",
    "LinkMonitor",
    "ModelPlanner",
    "Observation",
    "OraclePerception",
    "Perception",
    "PlanBackend",
    "PlanError",
    "PlanStats",
    "Planner",
    "Proposal",
    "QueuedAction",
    "RobotDaemon",
    "RobotInterface",
    "RobotState",
    "SafetyGate",
    "SceneDescription",
    "ScriptedPlanner",
    "StreamingPlanParser",
    "Task",
    "build_prompt",
    "holds",
    "load_task",
    "make_robot",
    "parse_plan",
    "read_episode",
    "shipped_tasks",
]
