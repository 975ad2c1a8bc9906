"""The robot side on the fake backend: interface quirks, tasks, action grammar, safety gate, daemon,
status server, episode logs and the report (DESIGN.md, "Robot side")."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import threading
import time

import httpx
import pytest
from pydantic import ValidationError

from eespec.robot_cli import grammar_kwargs
from robot import (
    PLAN_SCHEMA,
    FakeRobot,
    Limits,
    PlanError,
    Proposal,
    SafetyGate,
    StreamingPlanParser,
    Task,
    holds,
    load_task,
    parse_plan,
    read_episode,
    shipped_tasks,
)
from robot.actions import Move
from robot.interface import Code
from robot.status_server import StatusServer, create_status_app
from tests.robot_helpers import (
    RecordingRobot,
    StallingPlanner,
    daemon_for,
    events,
    first_zero_after,
    model_planner,
    moving,
    ticks,
)
from tests.servers import free_port

DESIGN_EXAMPLE = {
    "name": "blue-ball-right",
    "instruction": "Walk to the blue ball and stop next to it.",
    "start": {"x": 0.0, "y": 0.0, "yaw_deg": 0},
    "objects": [{"name": "blue ball", "shape": "sphere", "color": "blue", "x": 2.0, "y": -1.0, "size": 0.15}],
    "obstacles": [{"shape": "box", "x": 1.0, "y": 0.0, "yaw_deg": 0, "size": [0.1, 1.0, 0.5]}],
    "success": {"near": "blue ball", "within_m": 0.5, "time_limit_s": 60},
}


class ManualClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


# --- the interface: Go2 quirks on the fake ---------------------------------------------------------------


def standing_fake(clock: ManualClock, obstacles: bool = False) -> FakeRobot:
    task = Task.model_validate(DESIGN_EXAMPLE if obstacles else DESIGN_EXAMPLE | {"obstacles": []})
    robot = FakeRobot(task, clock=clock)
    assert robot.stand_up() == Code.OK
    clock.advance(1.0)
    assert robot.state().posture == "standing"
    return robot


def test_move_is_ignored_after_stand_up_until_balance_stand_and_ready():
    clock = ManualClock()
    robot = standing_fake(clock)
    robot.move(0.5, 0, 0)
    clock.advance(0.2)
    assert robot.state().vx == 0.0  # joints locked after stand_up
    assert robot.balance_stand() == Code.OK
    robot.move(0.5, 0, 0)
    clock.advance(0.2)
    assert robot.state().vx == 0.0  # not ready yet, and no signal says so
    clock.advance(0.4)
    for _ in range(10):
        robot.move(0.5, 0, 0)
        clock.advance(0.05)
    s = robot.state()
    assert s.vx == pytest.approx(0.5) and s.x > 0.05


def test_velocities_are_clamped_and_slewed_and_moves_expire():
    clock = ManualClock()
    robot = standing_fake(clock)
    robot.balance_stand()
    clock.advance(1.0)
    robot.move(9.0, -9.0, 9.0)
    clock.advance(0.1)
    s = robot.state()
    assert s.vx == pytest.approx(robot.motion.p.accel * 0.1)  # slewed
    for _ in range(40):
        robot.move(9.0, -9.0, 9.0)
        clock.advance(0.05)
    s = robot.state()
    assert (s.vx, s.vy, s.vyaw) == (robot.motion.p.max_vx, -robot.motion.p.max_vy, robot.motion.p.max_vyaw)
    clock.advance(robot.move_timeout_s + 1.0)  # no more Moves: it stops by itself
    assert robot.state().stopped()


def test_a_fault_refuses_moves_until_recovery_stand():
    clock = ManualClock()
    robot = standing_fake(clock)
    robot.balance_stand()
    clock.advance(1.0)
    robot.inject_fault(1001)
    assert robot.move(0.3, 0, 0) == Code.FAULT
    assert robot.state().error_code == 1001
    assert robot.recovery_stand() == Code.OK
    clock.advance(2.0)
    assert robot.state().error_code == 0 and robot.state().posture == "standing"


def test_the_fake_counts_a_collision_and_stops_at_an_obstacle():
    clock = ManualClock()
    robot = standing_fake(clock, obstacles=True)
    robot.balance_stand()
    clock.advance(1.0)
    for _ in range(100):  # 5 s toward the wall at x = 0.9
        robot.move(0.5, 0, 0)
        clock.advance(0.05)
    s = robot.state()
    assert robot.collisions == 1
    assert s.x < 0.9 - 0.25 and s.vx < 0.5


# --- tasks ---------------------------------------------------------------------------------------------


def test_shipped_tasks_are_six_or_more_and_load_by_name():
    tasks = shipped_tasks()
    assert len(tasks) >= 6
    assert {type(t.success.condition).__name__ for t in tasks} >= {"Near", "InRegion", "AllOf"}
    for t in tasks:
        assert load_task(t.name) == t
        assert Task.model_validate(t.to_file()) == t  # files round-trip


def test_design_example_parses_in_si_and_conditions_hold():
    task = Task.model_validate(DESIGN_EXAMPLE)
    assert task.start.yaw == 0.0 and task.obstacles[0].size == (0.1, 1.0, 0.5)
    assert task.success.time_limit_s == 60 and task.success.max_collisions is None
    c = task.success.condition
    assert holds(c, task, 2.0, -0.6, 0.0)  # 0.25 m from the ball's surface
    assert not holds(c, task, 0.0, 0.0, 0.0)
    facing = Task.model_validate(
        DESIGN_EXAMPLE | {"success": {"facing": "blue ball", "within_deg": 10}, "start": {"yaw_deg": 90}}
    )
    assert facing.start.yaw == pytest.approx(math.pi / 2)
    bearing = math.atan2(-1.0, 2.0)
    assert holds(facing.success.condition, facing, 0, 0, bearing + math.radians(9))
    assert not holds(facing.success.condition, facing, 0, 0, bearing + math.radians(11))
    both = Task.model_validate(
        DESIGN_EXAMPLE
        | {
            "success": {
                "all": [
                    {"region": {"x": 2, "y": -1, "radius": 0.5}},
                    {"facing": "blue ball", "within_deg": 5},
                ]
            }
        }
    )
    assert holds(both.success.condition, both, 1.8, -1.0, 0.0)
    assert not holds(both.success.condition, both, 1.8, -1.0, 1.0)


@pytest.mark.parametrize(
    "change",
    [
        {"objects": [{"name": "b", "shape": "cone", "color": "blue", "x": 1, "y": 0, "size": 0.1}]},
        {"objects": [{"name": "b", "shape": "box", "color": "blue", "x": 1, "y": 0, "size": 0.1}]},
        {"objects": [{"name": "b", "shape": "sphere", "color": "pink", "x": 1, "y": 0, "size": 0.1}]},
        {"success": {"near": "red cube", "within_m": 0.5}},
        {"success": {"near": "blue ball", "within_m": 0.5, "region": {"x": 0, "y": 0, "radius": 1}}},
        {"success": {"time_limit_s": 10}},
        {"start": {"x": 0, "y": 0, "yaw": 1.0}},
        {"extra": 1},
    ],
)
def test_bad_task_files_are_rejected(change):
    with pytest.raises(ValidationError):
        Task.model_validate(DESIGN_EXAMPLE | change)


def test_a_task_file_by_path(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(DESIGN_EXAMPLE))
    assert load_task(str(path)).name == "blue-ball-right"
    with pytest.raises(KeyError):
        load_task("no-such-task")


# --- the action grammar --------------------------------------------------------------------------------


def test_plans_parse_strictly():
    plan = parse_plan(
        '[{"action": "move", "vx": 0.5, "duration_s": 1}, {"action": "turn", "deg": -90}, '
        '{"action": "stop"}, {"action": "done"}]'
    )
    assert [a.action for a in plan] == ["move", "turn", "stop", "done"]
    assert plan[0] == Move(action="move", vx=0.5, vy=0.0, vyaw=0.0, duration_s=1.0)
    bad = {
        "malformed": ["hello", "[]", '{"action": "stop"}', '[{"action": "stop"}'],
        "out_of_range": [
            '[{"action": "move", "vx": 1.5, "duration_s": 1}]',
            '[{"action": "move", "vyaw": -2, "duration_s": 1}]',
            '[{"action": "move", "vx": 0.1, "duration_s": 0}]',
            '[{"action": "turn", "deg": 270}]',
        ],
        "bad_action": [
            '[{"action": "fly"}]',
            '[["stop"]]',
            '[{"action": "stop", "vx": 1}]',
            '[{"action": "move", "vx": "0.5", "duration_s": 1}]',
            '[{"action": "move", "vx": true, "duration_s": 1}]',
        ],
    }
    for code, texts in bad.items():
        for text in texts:
            with pytest.raises(PlanError) as info:
                parse_plan(text)
            assert info.value.code == code, text


def test_the_schema_is_the_parser_and_its_bounds_are_the_safety_limits():
    defs = PLAN_SCHEMA["$defs"]
    move = defs["Move"]["properties"]
    limits = Limits()
    assert (move["vx"]["maximum"], move["vy"]["maximum"], move["vyaw"]["maximum"]) == (
        limits.vx,
        limits.vy,
        limits.vyaw,
    )
    assert PLAN_SCHEMA["type"] == "array" and PLAN_SCHEMA["maxItems"] == 8
    assert set(defs) == {"Move", "Turn", "Stop", "StandUp", "StandDown", "Done"}


def test_the_streaming_parser_yields_each_action_once_it_is_closed():
    p = StreamingPlanParser()
    assert p.feed('[{"action": "move", "vx": 0.3, "dur') == []
    assert [a.action for a in p.feed('ation_s": 1}, {"action": "st')] == ["move"]
    assert [a.action for a in p.feed('op"}]')] == ["stop"]
    p.finish()
    p = StreamingPlanParser()
    assert [a.action for a in p.feed('[{"action": "stop"},')] == ["stop"]
    with pytest.raises(PlanError):
        p.feed('{"action": "move", "vx": 7, "duration_s": 1}')
    with pytest.raises(PlanError):
        p.feed("]")  # stays failed
    with pytest.raises(PlanError):
        StreamingPlanParser().feed('Sure! [{"action": "stop"}]')


def test_the_grammar_is_passed_only_to_a_decoder_that_takes_one():
    def with_grammar(prompt_ids, *, max_tokens, grammar=None): ...
    def without(prompt_ids, *, max_tokens): ...

    assert grammar_kwargs(with_grammar, PLAN_SCHEMA) == {"grammar": {"json_schema": PLAN_SCHEMA}}
    assert grammar_kwargs(without, PLAN_SCHEMA) == {}


# --- the safety gate -----------------------------------------------------------------------------------


def gate() -> tuple[SafetyGate, list[tuple[str, dict]]]:
    log: list[tuple[str, dict]] = []
    return SafetyGate(lambda name, detail: log.append((name, detail)), tick_s=0.04), log


def test_gate_limits_and_acceleration():
    g, log = gate()
    d = g.decide(0.0, Proposal((1.2, 0, 0), 1.0))
    assert d.twist == (0, 0, 0) and log[-1][0] == "out_of_range_refused"
    twists = [g.decide(0.04 * i, Proposal((1.0, 0.0, -1.5), 10.0)).twist for i in range(1, 40)]
    steps = [b[0] - a[0] for a, b in zip(twists, twists[1:], strict=False)]
    assert max(steps) <= Limits().ax * 0.04 + 1e-9
    assert twists[-1] == (1.0, 0.0, -1.5)
    assert g.decide(2.0, Proposal((0.2, 0, 0), 10.0)).twist == (0.2, 0, 0)  # slowing down is immediate


def test_gate_watchdog_zeroes_a_stale_command_and_refuses_unverified():
    g, log = gate()
    assert g.decide(0.0, Proposal((0.3, 0, 0), 0.5)).source == "plan"
    d = g.decide(0.6, Proposal((0.3, 0, 0), 0.5))
    assert (d.twist, d.source, d.safety) == ((0, 0, 0), "watchdog", "stale")
    assert log[-1][0] == "watchdog" and log[-1][1]["reason"] == "stale"
    d = g.decide(0.7, Proposal((0.3, 0, 0), 5.0, verified=False))
    assert d.twist == (0, 0, 0) and log[-1][0] == "unverified_refused"


def test_gate_estop_latches_until_reset_and_nan_is_a_fault():
    g, log = gate()
    g.latch("http")
    for t in range(5):
        assert g.decide(float(t), Proposal((0.3, 0, 0), 99.0)).source == "estop"
    assert g.reset() and not g.reset()
    assert g.decide(10.0, Proposal((0.1, 0, 0), 99.0)).source == "plan"
    d = g.decide(10.04, Proposal((math.nan, 0, 0), 99.0))
    assert d.source == "estop" and g.estopped
    assert [n for n, _ in log] == ["estop", "estop_reset", "estop"]


def test_gate_link_policies():
    g, log = gate()
    g.set_link(False)
    d = g.decide(0.0, Proposal((0.3, 0, 0), 9.0))
    assert (d.twist, d.source, d.safety) == ((0, 0, 0), "link-loss", "link-lost")
    g2, _ = gate()
    g2.link_policy = "edge-only"
    g2.set_link(False)
    ds = [g2.decide(0.04 * i, Proposal((0.9, 0, 1.4), 9.0, verified=False)) for i in range(1, 60)]
    assert ds[-1].twist == (0.5, 0, 0.75) and ds[-1].source == "plan" and not ds[-1].verified


# --- perception and the executor -------------------------------------------------------------------------


def test_oracle_perception_bins_what_the_camera_would_see():
    from robot import OraclePerception
    from robot.interface import RobotState

    here = RobotState(0, 0, 0, 0, 0, 0, "standing", "move", 0, 0.0)
    task = Task.model_validate(DESIGN_EXAMPLE)
    seen = OraclePerception(task).perceive(None, here)
    assert seen.objects == []  # the wall (0.5 m high) hides the ball
    assert seen.obstacle_ahead and seen.free_direction in ("left", "right")
    low_wall = DESIGN_EXAMPLE["obstacles"][0] | {"size": [0.1, 1.0, 0.1]}
    task = Task.model_validate(DESIGN_EXAMPLE | {"obstacles": [low_wall]})
    seen = OraclePerception(task).perceive(None, here)
    (ball,) = seen.objects
    assert (ball.name, ball.color, ball.shape, ball.bearing, ball.distance) == (
        "blue ball",
        "blue",
        "sphere",
        "right",
        "mid",
    )
    assert ball.bearing_rad == pytest.approx(math.atan2(-1, 2), abs=1e-3)
    behind = OraclePerception(task).perceive(
        None, RobotState(0, 0, math.pi, 0, 0, 0, "standing", "move", 0, 0.0)
    )
    assert behind.objects == [] and not behind.obstacle_ahead
    assert "blue ball" in seen.to_text() and "obstacle is ahead" in seen.to_text()


def test_the_executor_drops_queued_actions_past_their_deadline_and_closes_turns_on_yaw():
    from robot import Executor, QueuedAction
    from robot.actions import Turn
    from robot.interface import RobotState

    dropped: list[str] = []
    ex = Executor(lambda name, detail: dropped.append(name))
    ex.awaiting_readiness = False
    state = RobotState(0, 0, 0, 0, 0, 0, "standing", "move", 0, 0.0)
    ex.push(QueuedAction(Move(action="move", vx=0.3, duration_s=1.0), deadline=0.5, verified=True, plan_id=1))
    ex.push(QueuedAction(Move(action="move", vx=0.2, duration_s=1.0), deadline=0.9, verified=True, plan_id=1))
    assert ex.step(0.1, state).twist == (0.3, 0.0, 0.0)
    assert ex.step(1.2, state) is None and dropped == ["stale_action_dropped"]  # the second one was late
    ex.push(QueuedAction(Turn(action="turn", deg=90), deadline=9.0, verified=True, plan_id=2))
    assert ex.step(2.0, state).twist[2] > 0  # turning left
    almost = RobotState(0, 0, math.radians(80), 0, 0, 0.5, "standing", "move", 0, 2.5)
    assert 0 < ex.step(2.5, almost).twist[2] < 1.0  # slowing down near the target yaw
    assert ex.step(2.6, RobotState(0, 0, math.radians(90), 0, 0, 0, "standing", "move", 0, 2.6)) is None


# --- the daemon on the fake ----------------------------------------------------------------------------


def run(daemon):
    return asyncio.run(daemon.run())


@pytest.mark.parametrize("name", ["cylinder-then-face-box"])  # all six: tests/test_robot_sim.py
def test_the_scripted_planner_solves_tasks_on_the_fake(name, tmp_path):
    daemon = daemon_for(name, log_dir=tmp_path)
    result = run(daemon)
    assert result.success and result.reason == "success", result.summary
    ep = read_episode(tmp_path)
    assert set(ep["summary"]) == {
        "task",
        "planner",
        "success",
        "time_to_goal_s",
        "collisions",
        "plans",
        "plan_ms_median",
        "safety_events",
    }
    assert ep["summary"]["time_to_goal_s"] == pytest.approx(result.time_to_goal_s, abs=1e-3)
    t = ep["ticks"]
    assert set(t[0]) == {"kind", "t", "pose", "cmd", "source", "verified", "safety", "link"}
    gaps = [b["t"] - a["t"] for a, b in zip(t, t[1:], strict=False)]
    assert sorted(gaps)[len(gaps) // 2] <= 0.05  # the control tick runs at ≥ 20 Hz
    assert set(ep["plans"][0]) >= {
        "kind",
        "t",
        "mode",
        "ms",
        "tokens",
        "actions",
        "mean_accepted_len",
        "predraft_hits",
    }
    assert (tmp_path / "episode.mcap").stat().st_size > 0
    # success means stopped on the goal: the last pose satisfies the task
    task = load_task(name)
    assert holds(task.success.condition, task, *t[-1]["pose"])


def test_a_stale_plan_brings_the_command_to_zero_within_half_a_second():
    clock = time.monotonic
    planner = StallingPlanner(stall_at=4, stall_s=2.0, clock=clock)
    daemon = daemon_for("blue-ball-ahead", planner, duration_s=5.5, plan_max_age_s=1.0)
    run(daemon)
    plans = [r for r in daemon.log.records if r["kind"] == "plan"]
    stalled = plans[3]
    assert stalled["obs_t"] == pytest.approx(planner.stall_started, abs=1e-3)
    assert events(daemon, "stale_plan"), "the late plan was not dropped"
    # the queue held `queue_s` when the planner stalled; once that ran out, zero within 0.5 s
    lapse = stalled["obs_t"] + stalled["queue_s"]
    assert first_zero_after(daemon, stalled["obs_t"]) <= lapse + 0.5
    arrived = events(daemon, "stale_plan")[0]["t"]
    assert not any(moving(t) for t in ticks(daemon) if lapse + 0.5 <= t["t"] <= arrived)
    assert any(moving(t) for t in ticks(daemon) if t["t"] < stalled["obs_t"])  # it was moving before


def test_malformed_out_of_range_and_unverified_plans_never_reach_move():
    texts = [
        "I will walk to the ball.",
        '[{"action": "move", "vx": 3.0, "vy": 0, "vyaw": 0, "duration_s": 2}]',
        '[{"action": "move", "vx": 0.5, "duration_s": 2}',  # never closed... but the action is: see below
    ]
    task = load_task("blue-ball-ahead")
    robot = RecordingRobot(task)
    daemon = daemon_for(task, model_planner(texts[:2]), robot=robot, duration_s=3.0)
    run(daemon)
    assert robot.moves == [] and not any(moving(t) for t in ticks(daemon))
    codes = {e["detail"]["error"].split(":")[0] for e in events(daemon, "plan_rejected")}
    assert codes == {"malformed", "out_of_range"}
    robot = RecordingRobot(task)
    daemon = daemon_for(
        task, model_planner([texts[2].replace("}", "}]")], verified=False), robot=robot, duration_s=2.5
    )
    run(daemon)
    assert robot.moves == [] and events(daemon, "unverified_refused")
    # a verified action closed before a malformed tail is acted on; nothing after the fault is
    robot = RecordingRobot(task)
    tail = (
        '[{"action": "move", "vx": 0.3, "duration_s": 0.6}, {"action": "move", "vx": 0.9, "duration_s": 9}]'
    )
    daemon = daemon_for(task, model_planner([tail], pieces=7), robot=robot, duration_s=3.0)
    run(daemon)
    assert robot.moves and max(m[0] for m in robot.moves) <= 0.3 + 1e-9
    assert events(daemon, "plan_rejected")


def test_estop_latches_over_http_and_signal_and_holds_until_reset():
    task = load_task("blue-ball-ahead")
    robot = RecordingRobot(task)
    daemon = daemon_for(task, robot=robot, duration_s=9.0)
    port = free_port()
    server = StatusServer(create_status_app(daemon, daemon.metrics, api_key="secret"), port).start()
    marks: dict[str, float] = {}
    auth = {"Authorization": "Bearer secret"}

    def operator() -> None:
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(timeout=5) as http:
            while not (daemon.status() and any(daemon.status()["command"])):
                time.sleep(0.02)
            assert http.get(url + "/status").status_code == 401
            marks["estop"] = daemon.now()
            assert http.post(url + "/estop", headers=auth).json() == {"estop": True}
            time.sleep(1.5)
            marks["status"] = http.get(url + "/status", headers=auth).json()
            marks["camera"] = http.get(url + "/camera.jpg", headers=auth).content[:3]
            marks["metrics"] = http.get(url + "/metrics", headers=auth).text
            marks["reset"] = daemon.now()
            http.post(url + "/estop/reset", headers=auth)
            time.sleep(2.5)
            marks["signal"] = daemon.now()
            os.kill(os.getpid(), signal.SIGUSR1)

    thread = threading.Thread(target=operator, daemon=True)
    thread.start()
    try:
        run(daemon)
    finally:
        server.stop()
    thread.join(timeout=5)
    status = marks["status"]
    assert set(status) == {
        "t",
        "posture",
        "pose",
        "velocity",
        "command",
        "command_age_s",
        "queue_len",
        "estop",
        "link",
        "safety",
        "planner",
        "task",
    }
    assert status["estop"] is True and status["safety"] == "estop" and status["command"] == [0, 0, 0]
    assert status["posture"] in ("lying_down", "lying")  # soft stop: stop_move, then stand_down
    assert set(status["planner"]) == {"mode", "last_plan_ms"} and set(status["task"]) == {
        "name",
        "elapsed_s",
        "success",
    }
    assert marks["camera"] == b"\xff\xd8\xff" and "robot_ticks_total" in marks["metrics"]
    assert first_zero_after(daemon, marks["estop"]) <= marks["estop"] + 0.5
    held = [t for t in ticks(daemon) if marks["estop"] + 0.1 <= t["t"] <= marks["reset"]]
    assert held and all(not moving(t) and t["source"] == "estop" for t in held)
    after_reset = [t for t in ticks(daemon) if marks["reset"] < t["t"] < marks["signal"]]
    assert any(moving(t) for t in after_reset)  # it stood up again and went on
    assert first_zero_after(daemon, marks["signal"]) <= marks["signal"] + 0.5
    reasons = [e["detail"]["reason"] for e in events(daemon, "estop")]
    assert reasons == ["http", "signal"]
    assert all(not moving(t) for t in ticks(daemon) if t["t"] > marks["signal"] + 0.5)


def test_a_robot_fault_latches_the_estop():
    task = load_task("blue-ball-ahead")
    robot = RecordingRobot(task)
    daemon = daemon_for(task, robot=robot, duration_s=4.0)

    def fault_later() -> None:
        while not (daemon.status() and any(daemon.status()["command"])):
            time.sleep(0.02)
        robot.inject_fault(1001)

    threading.Thread(target=fault_later, daemon=True).start()
    run(daemon)
    assert [e["detail"]["reason"] for e in events(daemon, "estop")] == ["fault"]
    assert ticks(daemon)[-1]["source"] == "estop"


def test_the_report_renders_a_table_and_a_trajectory_plot(tmp_path):
    from typer.testing import CliRunner

    from eespec.cli import app

    run(daemon_for("stop-at-line", log_dir=tmp_path / "ep"))
    result = CliRunner().invoke(app, ["robot", "report", str(tmp_path / "ep")])
    assert result.exit_code == 0, result.output
    assert "| ep | stop-at-line | scripted | yes |" in result.output
    png = (tmp_path / "ep" / "trajectory.png").read_bytes()
    assert png[:4] == b"\x89PNG"


def test_the_mcap_log_holds_camera_frames(tmp_path):
    from mcap.reader import make_reader

    run(daemon_for("blue-ball-ahead", log_dir=tmp_path, duration_s=2.0))
    with (tmp_path / "episode.mcap").open("rb") as f:
        topics = [channel.topic for _, channel, _ in make_reader(f).iter_messages()]
    assert topics.count("/camera/head") >= 5 and "/robot/tick" in topics


def test_cli_tasks_and_run_with_a_users_task_file(tmp_path):
    from typer.testing import CliRunner

    from eespec.cli import app

    out = CliRunner().invoke(app, ["robot", "tasks"])
    assert out.exit_code == 0 and len(out.output.strip().splitlines()) == len(shipped_tasks())
    near = DESIGN_EXAMPLE | {
        "obstacles": [],
        "success": {"near": "blue ball", "within_m": 0.5, "time_limit_s": 30},
    }
    path = tmp_path / "task.json"
    path.write_text(json.dumps(near))
    out = CliRunner().invoke(app, ["robot", "run", "--task", str(path), "--log", str(tmp_path / "log")])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output.strip().splitlines()[-1])["success"] is True
    path.write_text(json.dumps(near | {"success": {"near": "nothing", "within_m": 1}}))
    out = CliRunner().invoke(app, ["robot", "run", "--task", str(path)])
    assert out.exit_code == 2 and "not a valid task file" in out.output


def test_a_reset_during_the_soft_stop_waits_for_it_and_stands_up_again():
    task = load_task("stop-at-line")
    daemon = daemon_for(task, duration_s=6.0)
    marks: dict[str, float] = {}

    def operator() -> None:
        while not (daemon.status() and any(daemon.status()["command"])):
            time.sleep(0.02)
        daemon.estop("test")
        time.sleep(0.2)  # still lying down
        marks["reset"] = daemon.now()
        daemon.estop_reset()

    threading.Thread(target=operator, daemon=True).start()
    run(daemon)
    assert not events(daemon, "estop")[1:]  # no fault latched by a failed stand-up
    standing = [e["t"] for e in events(daemon, "standing")]
    assert len(standing) == 2 and standing[1] > marks["reset"]
    assert any(moving(t) for t in ticks(daemon) if t["t"] > standing[1])


def test_the_status_api_needs_a_key_unless_told_otherwise(monkeypatch):
    """Secure by default, like `eespec serve`: the status API can e-stop and reset the robot."""
    from typer.testing import CliRunner

    from eespec.cli import app

    monkeypatch.delenv("EESPEC_ROBOT_API_KEY", raising=False)
    result = CliRunner().invoke(app, ["robot", "run", "--task", "stop-at-line", "--status-port", "8799"])
    assert result.exit_code == 2
    assert "--status-insecure-no-auth" in result.output
