"""The robot's link to the cloud: a killed cloud and a cut link (through the network emulator) stop the
robot within 0.5 s; `edge-only` goes on with the draft's plans under halved limits; the model planner over
a real `EdgeClient` moves the robot only on verified, valid, in-range plans."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from eespec.netem import NetworkEmulator
from eespec.robot_cli import RemoteBackend
from robot import HttpHealthPing, Limits, ModelPlanner, ScriptedPlanner, load_task
from shared.tiny import save_tiny_pair, tiny_llama
from tests.helpers import bytelevel_tokenizer
from tests.robot_helpers import RecordingRobot, daemon_for, events, first_zero_after, moving, ticks
from tests.servers import ServerProcess, running_server, tiny_loaded

KEY = "k"
VOCAB = 112  # the byte-level test tokenizer's 107 ids, padded (it is one llguidance can compile for)


@pytest.fixture(scope="module")
def tok():
    return bytelevel_tokenizer()


@pytest.fixture(scope="module")
def cloud(tok):
    model = tiny_llama(0, vocab_size=VOCAB, hidden_size=32, layers=4)
    model.generation_config.eos_token_id = 2
    with running_server(tiny_loaded(model, tok, exits=(1, 3)), api_key=[KEY]) as url:
        yield url


def when_moving(daemon, then, after_s: float = 1.0) -> threading.Thread:
    """Run `then()` `after_s` seconds after the robot first moves; its episode time goes to `.marks["t"]`."""
    marks: dict[str, float] = {}

    def watch() -> None:
        while not (daemon.status() and any(daemon.status()["command"])):
            time.sleep(0.01)
        time.sleep(after_s)
        marks["t"] = daemon.now()
        then()

    thread = threading.Thread(target=watch, daemon=True)
    thread.marks = marks  # type: ignore[attr-defined]
    thread.start()
    return thread


async def run_with_ping(daemon, url: str):
    ping = HttpHealthPing(url)
    daemon.link_ping = ping
    try:
        return await daemon.run()
    finally:
        await ping.aclose()


def test_a_killed_cloud_stops_the_robot_within_half_a_second(tmp_path):
    target_path, _ = save_tiny_pair(tmp_path)
    server = ServerProcess(target_path, api_key=KEY, exits="1,3").start()
    try:
        daemon = daemon_for("stop-at-line", duration_s=5.0)
        watcher = when_moving(daemon, server.kill, after_s=1.0)
        asyncio.run(run_with_ping(daemon, server.url))
    finally:
        server.kill()
    t_kill = watcher.marks["t"]
    lost = events(daemon, "link_lost")
    assert lost and lost[0]["t"] - t_kill <= 0.3 + 0.05, (
        lost
    )  # noticed within 0.3 s (one 50 ms poll of slack)
    assert first_zero_after(daemon, t_kill) - t_kill <= 0.5
    after = [t for t in ticks(daemon) if t["t"] > t_kill + 0.5]
    assert after and all(not moving(t) and t["link"] == "down" for t in after)  # and it holds
    assert any(moving(t) for t in ticks(daemon) if t["t"] < t_kill)


def test_a_cut_link_stops_the_robot_and_it_goes_on_when_the_link_returns(cloud):
    port = int(cloud.rsplit(":", 1)[1])
    emu = NetworkEmulator("127.0.0.1", port)
    with emu.start_in_thread():
        daemon = daemon_for("stop-at-line", duration_s=10.0)
        cut_s = 1.5
        watcher = when_moving(daemon, lambda: emu.stall("both", None), after_s=0.8)

        def resume_later() -> None:
            while "t" not in watcher.marks:
                time.sleep(0.01)
            time.sleep(cut_s)
            emu.resume()

        threading.Thread(target=resume_later, daemon=True).start()
        result = asyncio.run(run_with_ping(daemon, emu.url()))
    t_cut = watcher.marks["t"]
    lost, restored = events(daemon, "link_lost"), events(daemon, "link_restored")
    assert lost and lost[0]["t"] - t_cut <= 0.3
    assert first_zero_after(daemon, t_cut) - t_cut <= 0.5
    held = [t for t in ticks(daemon) if t_cut + 0.5 <= t["t"] <= restored[0]["t"]]
    assert held and all(not moving(t) and t["source"] == "link-loss" for t in held)
    assert any(moving(t) for t in ticks(daemon) if t["t"] > restored[0]["t"])
    assert result.success, result.summary  # the task is still done after the link returns


def test_edge_only_goes_on_with_halved_limits_while_the_link_is_down(cloud):
    port = int(cloud.rsplit(":", 1)[1])
    task = load_task("stop-at-line")
    emu = NetworkEmulator("127.0.0.1", port)
    with emu.start_in_thread():
        daemon = daemon_for(
            task,
            duration_s=4.0,
            link_policy="edge-only",
            fallback_planner=ScriptedPlanner(task, verified=False),
        )
        watcher = when_moving(daemon, lambda: emu.stall("both", None), after_s=0.6)
        asyncio.run(run_with_ping(daemon, emu.url()))
    t_cut = watcher.marks["t"]
    assert events(daemon, "link_lost")[0]["detail"]["policy"] == "edge-only"
    down = [t for t in ticks(daemon) if t["link"] == "down"]
    assert down and any(moving(t) for t in down)
    assert all(abs(t["cmd"][0]) <= 0.5 + 1e-9 and abs(t["cmd"][2]) <= 0.75 + 1e-9 for t in down)
    assert any(not t["verified"] and moving(t) for t in down)
    fallback_plans = [
        p for p in daemon.log.records if p["kind"] == "plan" and p["mode"].endswith("(fallback)")
    ]
    assert fallback_plans and all(p["t"] > t_cut for p in fallback_plans)


def test_the_model_planner_over_an_edge_client_moves_only_on_verified_valid_plans(cloud, tok, tmp_path):
    """Random weights under the plan grammar: the plans are valid JSON of bounded actions (whatever they
    mean), streamed from verified tokens; nothing else reaches `move`."""
    draft = tiny_llama(1, vocab_size=VOCAB, hidden_size=32, layers=1)
    draft.generation_config.eos_token_id = 2
    draft.save_pretrained(tmp_path / "draft")
    tok.save_pretrained(tmp_path / "draft")
    task = load_task("blue-ball-ahead")
    robot = RecordingRobot(task)
    backend = RemoteBackend(cloud, KEY, str(tmp_path / "draft"), "sd-preempt", window=4)
    daemon = daemon_for(task, ModelPlanner(backend, max_tokens=64), robot=robot, duration_s=6.0)

    async def main():
        try:
            return await run_with_ping(daemon, cloud)
        finally:
            await backend.aclose()

    asyncio.run(main())
    plans = [p for p in daemon.log.records if p["kind"] == "plan"]
    assert plans and all(p["mode"] == "sd-preempt" and p["tokens"] > 0 and p["constrained"] for p in plans)
    assert all(p["mean_accepted_len"] is not None for p in plans)
    assert not [e for e in events(daemon, "plan_rejected") if "planner_error" in e["detail"]["error"]]
    limits = Limits()
    assert all(limits.within(m) for m in robot.moves)
    assert all(t["verified"] and t["source"] == "plan" for t in ticks(daemon) if moving(t))
