"""Helpers of the dashboard tests: a daemon with its status server in a thread, headless Chromium."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from eespec.bench.scripts.dashboard_ticks import FLAGS as CHROMIUM_FLAGS
from robot.daemon import RobotDaemon
from robot.status_server import StatusServer, create_status_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
KEY = "dashboard-test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningDaemon:
    """`daemon.run()` on an event loop of its own thread, its status server on 127.0.0.1."""

    def __init__(self, daemon: RobotDaemon, api_key: str = KEY) -> None:
        self.daemon = daemon
        self.api_key = api_key
        self.server = StatusServer(create_status_app(daemon, daemon.metrics, api_key), free_port())
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="daemon", daemon=True)

    def _run(self) -> None:
        try:
            self.result = asyncio.run(self.daemon.run())
        except BaseException as exc:  # surfaced by the test through `error`
            self.error = exc

    @property
    def url(self) -> str:
        return self.server.url

    def status(self) -> dict[str, Any]:
        r = httpx.get(self.url + "/status", headers={"Authorization": f"Bearer {self.api_key}"}, timeout=5)
        r.raise_for_status()
        return r.json()

    def __enter__(self) -> RunningDaemon:
        self.server.start()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.daemon.request_stop()
        self.thread.join(timeout=10)
        self.server.stop()


def chromium_options() -> Any:
    from selenium.webdriver.chrome.options import Options

    options = Options()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, "--window-size=1400,1000"):
        options.add_argument(flag)
    return options


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A fresh headless Chromium (its own --user-data-dir) under Debian's chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="eespec-chromium-") as profile:
        options = chromium_options()
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def log_in(driver: Any, url: str, key: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url + "/")
    box = driver.find_element(By.ID, "key")
    box.clear()
    box.send_keys(key)
    driver.find_element(By.ID, "login-btn").click()


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            last = condition()
            if last:
                return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")
