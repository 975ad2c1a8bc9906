"""Running `eespec serve` as a real process (demo, benchmarks, tests) and placing processes on cores."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pin_to_core(core: int) -> None:
    """Pin the calling process to one core where there are at least two (cloud and edge apart)."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {core})


class ServerProcess:
    """`eespec serve` in its own process: start (waits for /health 200), kill, restart on the same port."""

    def __init__(
        self,
        target: str,
        *,
        port: int | None = None,
        api_key: str | None = None,
        exits: str | None = None,
        threads: int = 1,
        core: int | None = None,
        dtype: str | None = None,
        ray_replicas: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.target = target
        self.dtype = dtype
        self.ray_replicas = ray_replicas  # `eespec serve --ray --replicas N`
        self.env = dict(env or {})  # EESPEC_* settings for this server only, on top of this process's env
        self.port = port or free_port()
        self.api_key = api_key or secrets.token_hex(16)
        self.exits = exits
        self.threads = threads
        self.core = core
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 300.0) -> ServerProcess:
        command = [sys.executable, "-m", "eespec", "serve", "--target", self.target, "--port", str(self.port)]
        command += ["--threads", str(self.threads), "--log-level", "warning"]
        if self.exits is not None:
            command += ["--exits", self.exits]
        if self.dtype is not None:
            command += ["--dtype", self.dtype]
        if self.ray_replicas is not None:
            command += ["--ray", "--replicas", str(self.ray_replicas)]
        # The key travels in the environment, not on argv (which every user can read in `ps`).
        env = {**os.environ, **self.env, "EESPEC_API_KEY": self.api_key}
        core = self.core
        self.process = subprocess.Popen(
            command, env=env, preexec_fn=(lambda: pin_to_core(core)) if core is not None else None
        )
        deadline = time.monotonic() + timeout
        ready: set[str] = set()  # server ids that answered ok (with --ray: every replica, each loads alone)
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with code {self.process.returncode}")
            with contextlib.suppress(httpx.HTTPError, ValueError):
                health = httpx.get(self.url + "/health", timeout=2)
                if health.status_code == 200:
                    ready.add(str(health.json().get("server_id")))
                    if len(ready) >= (self.ray_replicas or 1):
                        return self
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"the server was not ready after {timeout:.0f} s")
            time.sleep(0.1)

    def kill(self) -> None:
        """Stop it now (SIGKILL): the way a crashed or unplugged server goes."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """Stop it politely (SIGTERM), then forcibly after 10 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
        self.kill()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
