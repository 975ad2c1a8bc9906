"""The robot dashboard (issue 18) end to end: the daemon on the fake (or the sim), its status server on
127.0.0.1, the page in Debian's headless Chromium driven by Selenium."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import websockets

from robot import Completion, ModelPlanner, make_robot
from robot.event_feed import EventFeed
from tests.dashboard_helpers import CHROMEDRIVER, CHROMIUM, KEY, RunningDaemon, chromium, log_in, wait_for
from tests.robot_helpers import daemon_for

try:
    from selenium.webdriver.common.by import By
except ImportError:  # pragma: no cover - selenium is in .[dev]
    By = None

needs_browser = pytest.mark.skipif(
    By is None or not (CHROMIUM and CHROMEDRIVER),
    reason="needs selenium and Debian's chromium + chromium-driver (.ci/run installs them)",
)

PLAN = '[{"action": "move", "vx": 0.3, "vy": 0, "vyaw": 0, "duration_s": 0.5}]'
HEAD, DRAFTED, CONFIRMED, RETRACTED = '[{"action": ', '"move", "vx"', '"move", ', '"vx"'
TAIL = PLAN[len(HEAD + CONFIRMED) :]


class StreamingBackend:
    """Emits a known stream: verified head, unverified draft, part confirmed, the rest retracted, then
    the verified tail; two rounds with their early verdicts and pre-draft outcome."""

    mode, verified, constrained = "sd", True, False

    def __init__(self, pause_s: float = 0.0) -> None:
        self.pause_s = pause_s
        self.calls = 0

    async def complete(self, prompt, *, max_tokens, schema, on_verified, on_stream) -> Completion:
        self.calls += 1
        pause = self.pause_s if self.calls == 1 else 0.0
        on_stream("tokens", text=HEAD, verified=True)
        on_verified(HEAD)
        on_stream("tokens", text=DRAFTED, verified=False)
        await asyncio.sleep(pause)  # the first plan holds its unverified tokens on screen a while
        on_stream("verified", text=CONFIRMED)
        on_verified(CONFIRMED)
        on_stream("retract", text=RETRACTED)
        early = [{"layer": 4, "hit": True}]
        on_stream("round", round=1, accepted=3, drafted=4, early=early, predraft_hit=True)
        on_stream("tokens", text=TAIL, verified=True)
        on_verified(TAIL)
        on_stream(
            "round", round=2, accepted=1, drafted=4, early=[{"layer": 4, "hit": False}], predraft_hit=False
        )
        await asyncio.sleep(pause)
        return Completion(PLAN, tokens=20, mean_accepted_len=2.0, predraft_hits=1)


def test_feed_drops_oldest_for_a_slow_reader_and_never_blocks_the_publisher():
    async def scenario() -> None:
        feed = EventFeed(history=3)
        sub, history = feed.subscribe(maxlen=4)
        assert history == []
        for i in range(10):
            feed.publish("status", keep=i % 2 == 0, i=i)
        batch = await sub.next_batch()
        assert [e["i"] for e in batch] == [6, 7, 8, 9] and sub.dropped == 6
        assert [e["i"] for e in feed.history] == [4, 6, 8]
        sub.close()
        feed.publish("status", i=10)  # nobody subscribed: nothing queued
        assert not sub.queue

    asyncio.run(scenario())


def test_websocket_needs_the_key_as_first_message_and_then_streams_events():
    daemon = daemon_for("blue-ball-ahead", duration_s=20.0)

    async def client(url: str) -> None:
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps({"key": "wrong"}))
            refused = json.loads(await ws.recv())
            assert refused["kind"] == "error" and refused["error"]["code"] == "unauthorized"
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd.code == 1008
        async with websockets.connect(url) as ws:
            await ws.send(KEY)
            hello = json.loads(await ws.recv())
            assert hello["kind"] == "hello" and hello["task"]["name"] == "blue-ball-ahead"
            kinds: set[str] = set()
            while not {"status", "frame", "plan_start", "plan_end"} <= kinds:
                kinds |= {e["kind"] for e in json.loads(await asyncio.wait_for(ws.recv(), 10))}

    with RunningDaemon(daemon) as running:
        assert httpx.get(running.url + "/").status_code == 200  # the shell is open, it holds no data
        assert httpx.get(running.url + "/dashboard/robot.js").status_code == 200
        assert httpx.get(running.url + "/status").status_code == 401
        asyncio.run(client(running.url.replace("http", "ws") + "/ws"))
    assert running.error is None


@needs_browser
def test_page_shows_nothing_without_the_key_and_everything_with_it():
    daemon = daemon_for("blue-ball-ahead", duration_s=30.0)
    with RunningDaemon(daemon) as running, chromium() as driver:
        log_in(driver, running.url, "not-the-key")
        wait_for(lambda: driver.find_element(By.ID, "login-error").text == "wrong API key", what="refusal")
        assert not driver.find_element(By.ID, "app").is_displayed()
        assert driver.find_element(By.ID, "task-name").get_attribute("textContent") == ""
        log_in(driver, running.url, KEY)
        wait_for(lambda: driver.find_element(By.ID, "app").is_displayed(), what="the dashboard")
        assert not driver.find_element(By.ID, "login").is_displayed()
        wait_for(lambda: "blue-ball-ahead" in driver.find_element(By.ID, "task-name").text, what="the task")
        wait_for(lambda: driver.find_element(By.ID, "safety").text == "ok", what="the safety state")
        assert KEY not in driver.current_url
        # A reload keeps the key in this tab's sessionStorage only; logging out forgets it.
        driver.find_element(By.ID, "logout").click()
        wait_for(lambda: driver.find_element(By.ID, "login").is_displayed(), what="the login form")
        assert driver.execute_script("return sessionStorage.length") == 0


@needs_browser
def test_map_and_camera_follow_the_running_task():
    daemon = daemon_for("blue-ball-ahead", duration_s=30.0)
    with RunningDaemon(daemon) as running, chromium() as driver:
        log_in(driver, running.url, KEY)
        robot = wait_for(lambda: driver.find_element(By.ID, "robot"), what="the robot marker")
        wait_for(lambda: robot.get_attribute("data-x") is not None, what="a first pose")
        x0 = float(robot.get_attribute("data-x"))
        camera = driver.find_element(By.ID, "camera")
        frame0 = int(camera.get_attribute("data-frame"))
        wait_for(lambda: float(robot.get_attribute("data-x")) > x0 + 0.3, what="the robot to move on the map")
        wait_for(lambda: int(camera.get_attribute("data-frame")) >= frame0 + 5, what="new camera frames")
        trail = driver.find_element(By.ID, "trail")
        assert int(trail.get_attribute("data-points")) >= 5
        assert driver.execute_script("return document.getElementById('camera').naturalWidth") == 64
        assert len(driver.find_elements(By.CSS_SELECTOR, "#objects circle.object")) == 1
        assert (
            float(
                driver.find_element(By.ID, "command").get_attribute("data-command").strip("[]").split(",")[0]
            )
            >= 0
        )


@needs_browser
def test_streamed_tokens_appear_verified_unverified_and_retracted():
    backend = StreamingBackend(pause_s=1.5)
    daemon = daemon_for("blue-ball-ahead", ModelPlanner(backend), duration_s=30.0)
    with RunningDaemon(daemon) as running, chromium() as driver:
        log_in(driver, running.url, KEY)

        def first_plan(selector: str) -> list[str]:
            return [
                e.get_attribute("textContent")
                for e in driver.find_elements(By.CSS_SELECTOR, f'.plan[data-plan="1"] {selector}')
            ]

        # While the first plan is held: the draft's tokens show as unverified.
        wait_for(lambda: first_plan(".tok.unverified") == [DRAFTED], what="unverified tokens")
        assert first_plan(".tok.verified") == [HEAD]
        # Then part is confirmed, the rest retracted (still visible, struck through), the tail verified.
        wait_for(lambda: first_plan(".tok.retracted") == [RETRACTED], what="the retraction")
        wait_for(lambda: "".join(first_plan(".tok.verified")) == PLAN, timeout=5, what="the verified plan")
        assert first_plan(".tok.unverified") == []
        rounds = wait_for(lambda: first_plan("li.round") if len(first_plan("li.round")) == 2 else None)
        assert rounds[0] == "round 1: 3/4 accepted · early L4 ✓ · pre-draft hit"
        assert rounds[1] == "round 2: 1/4 accepted · early L4 ✗ · pre-draft miss"
        wait_for(lambda: driver.find_element(By.ID, "fig-accepted").text == "2.00", what="the figures")
        assert "%" in driver.find_element(By.ID, "fig-predraft").text
        assert driver.find_element(By.ID, "fig-tps").text not in ("", "–")


@needs_browser
def test_estop_button_zeroes_the_commanded_velocity_within_half_a_second():
    daemon = daemon_for("blue-ball-ahead", duration_s=30.0)
    with RunningDaemon(daemon) as running, chromium() as driver:
        log_in(driver, running.url, KEY)
        button = wait_for(lambda: driver.find_element(By.ID, "estop"), what="the e-stop button")
        wait_for(lambda: any(running.status()["command"]), what="a command in force")
        pressed = time.monotonic()
        button.click()
        wait_for(lambda: not any(running.status()["command"]), timeout=2.0, what="a zero command")
        assert time.monotonic() - pressed <= 0.5
        status = running.status()
        assert status["estop"] and status["safety"] == "estop"
        wait_for(lambda: driver.find_element(By.ID, "safety").text == "estop", what="the page's e-stop")
        time.sleep(0.5)
        assert not any(running.status()["command"])  # latched: it holds
        driver.find_element(By.ID, "reset").click()
        wait_for(lambda: not running.status()["estop"], what="the reset")
        wait_for(lambda: any(running.status()["command"]), timeout=10, what="the robot to go on")


@pytest.mark.slow
@needs_browser
def test_map_and_camera_follow_a_task_in_the_simulator():
    from robot import load_task

    task = load_task("blue-ball-ahead")
    robot = make_robot("sim", task)
    daemon = daemon_for(task, robot=robot, duration_s=40.0)
    with robot, RunningDaemon(daemon) as running, chromium() as driver:
        log_in(driver, running.url, KEY)
        robot_mark = driver.find_element(By.ID, "robot")
        wait_for(lambda: robot_mark.get_attribute("data-x") is not None, timeout=20, what="a first pose")
        x0 = float(robot_mark.get_attribute("data-x"))
        frame0 = int(driver.find_element(By.ID, "camera").get_attribute("data-frame"))
        wait_for(lambda: float(robot_mark.get_attribute("data-x")) > x0 + 0.3, timeout=30, what="motion")
        wait_for(
            lambda: int(driver.find_element(By.ID, "camera").get_attribute("data-frame")) >= frame0 + 5,
            what="simulator frames",
        )
        assert driver.execute_script("return document.getElementById('camera').naturalWidth") > 0
    assert running.error is None
