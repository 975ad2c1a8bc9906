"""Shared pieces of the benchmark scripts: workloads, placement on cores, a served target process."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import secrets
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

WORKLOADS_DIR = Path(__file__).parent / "workloads"


@dataclass(frozen=True)
class Workload:
    name: str
    prompts: list[str]
    chat: bool
    system: str | None = None

    def encode(self, tokenizer, prompt: str) -> list[int]:
        if not self.chat:
            return [int(t) for t in tokenizer(prompt).input_ids]
        messages = [{"role": "system", "content": self.system}] if self.system else []
        messages.append({"role": "user", "content": prompt})
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if not isinstance(ids, list) else ids
        return [int(t) for t in ids]


def load_workload(name: str) -> Workload:
    raw = json.loads((WORKLOADS_DIR / f"{name}.json").read_text())
    return Workload(raw["name"], list(raw["prompts"]), bool(raw.get("chat")), raw.get("system"))


def pin_to_core(core: int) -> None:
    """Pin this process to one core where there are at least two (cloud and edge apart)."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {core})


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


@contextlib.contextmanager
def served_target(
    port: int, *, target: str, exits: str, threads: int = 1, core: int | None = 0, api_key: str | None = None
) -> Iterator[tuple[str, str]]:
    """`eespec serve` as its own process (pinned to `core`); yields (url, api key) once /health is 200."""
    key = api_key or secrets.token_hex(8)
    command = [
        sys.executable,
        "-m",
        "eespec",
        "serve",
        "--target",
        target,
        "--exits",
        exits,
        "--port",
        str(port),
    ]
    command += ["--threads", str(threads), "--api-key", key, "--log-level", "warning"]
    process = subprocess.Popen(command, preexec_fn=(lambda: pin_to_core(core)) if core is not None else None)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("server not ready after 300 s")
            time.sleep(0.2)
        yield url, key
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        if process.poll() is None:
            process.kill()
