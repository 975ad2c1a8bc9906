"""The control loop's tick timing with and without browsers on the robot dashboard (issue 18).

    python -m eespec.bench.scripts.dashboard_ticks --browsers 0,3 --duration 20 --json out.json

Each cell runs a real `eespec robot run` process (sim backend, scripted planner, status server on
127.0.0.1), attaches N headless Chromium pages logged in to its dashboard (Debian's chromium and
chromedriver through Selenium, as the tests do), and reads the tick times back from the episode log:
the interval between consecutive control ticks (target 0.05 s at 20 Hz), median / p95 / max, counted
only from the moment every browser is attached (the episode's `elapsed_s` on `/status` then) to its end.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from eespec.bench.records import machine_line
from eespec.processes import free_port

KEY = "dashboard-ticks"
# Headless Chromium on this closed network (the dashboard tests start it the same way).
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def browser(url: str, profile: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = Options()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(
        service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options
    )
    driver.get(url + "/")
    driver.find_element(By.ID, "key").send_keys(KEY)
    driver.find_element(By.ID, "login-btn").click()
    return driver


def wait_up(url: str, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/", timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError("the status server did not come up")


def elapsed(url: str) -> float:
    import httpx

    status = httpx.get(url + "/status", headers={"Authorization": f"Bearer {KEY}"}, timeout=5).json()
    return float(status["task"]["elapsed_s"])


# A far goal, so the scripted planner keeps the robot walking for the whole measurement.
FAR_TASK = {
    "name": "far-red-ball",
    "instruction": "Walk to the red ball far ahead and stop next to it.",
    "start": {"x": 0.0, "y": 0.0, "yaw_deg": 0},
    "objects": [{"name": "red ball", "shape": "sphere", "color": "red", "x": 40.0, "y": 0.0, "size": 0.2}],
    "obstacles": [],
    "success": {"near": "red ball", "within_m": 0.5, "time_limit_s": 600},
}


def cell(browsers: int, duration: float, task: str | None, backend: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="eespec-ticks-") as tmp:
        if task is None:
            task = str(Path(tmp) / "far-red-ball.json")
            Path(task).write_text(json.dumps(FAR_TASK))
        log_dir = Path(tmp) / "log"
        port = free_port()
        command = [sys.executable, "-m", "eespec", "robot", "run", "--backend", backend, "--task", task]
        command += ["--planner", "scripted", "--duration", str(duration), "--log", str(log_dir)]
        command += ["--status-port", str(port)]
        env = {**os.environ, "EESPEC_ROBOT_API_KEY": KEY}
        daemon = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        drivers = []
        try:
            url = f"http://127.0.0.1:{port}"
            wait_up(url)
            for i in range(browsers):
                drivers.append(browser(url, str(Path(tmp) / f"profile{i}")))
            attached_at = elapsed(url)
            if attached_at > duration - 5:
                raise RuntimeError(f"the browsers took {attached_at:.0f} s to attach: raise --duration")
            daemon.wait(timeout=duration + 120)
        finally:
            for driver in drivers:
                with contextlib.suppress(Exception):
                    driver.quit()
            if daemon.poll() is None:
                daemon.kill()
        ticks = [
            record["t"]
            for record in map(json.loads, (log_dir / "episode.jsonl").read_text().splitlines())
            if record["kind"] == "tick" and record["t"] >= attached_at
        ]
    gaps = sorted(b - a for a, b in zip(ticks, ticks[1:], strict=False))
    return {
        "browsers": browsers,
        "ticks": len(ticks),
        "measured_from_s": attached_at,
        "interval_s_median": statistics.median(gaps),
        "interval_s_p95": gaps[int(0.95 * (len(gaps) - 1))],
        "interval_s_max": gaps[-1],
        "rate_hz": (len(ticks) - 1) / (ticks[-1] - ticks[0]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--browsers", default="0,3")
    parser.add_argument("--duration", type=float, default=60.0, help="episode length (browsers attach first)")
    parser.add_argument("--task", default=None, help="a task name or file (default: a far goal, built here)")
    parser.add_argument("--backend", default="sim")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = [cell(int(n), args.duration, args.task, args.backend) for n in args.browsers.split(",")]
    load = os.getloadavg()
    print("| browsers | ticks | rate Hz | interval median / p95 / max (ms) |")
    print("| ---: | ---: | ---: | --- |")
    for r in rows:
        print(
            f"| {r['browsers']} | {r['ticks']} | {r['rate_hz']:.1f} | {1000 * r['interval_s_median']:.1f} / "
            f"{1000 * r['interval_s_p95']:.1f} / {1000 * r['interval_s_max']:.1f} |"
        )
    record = {
        "command": "python -m eespec.bench.scripts.dashboard_ticks " + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_line(1),
        "load_average": load,
        "cells": rows,
    }
    print(f"load average after the run: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
