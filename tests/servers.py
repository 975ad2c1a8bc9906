"""Real uvicorn servers on loopback for tests: in a thread (shared models) or as a subprocess."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import uvicorn

from cloud_server.app import create_app
from cloud_server.exits import ExitHeads
from cloud_server.loading import LoadedTarget
from cloud_server.settings import ServerSettings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tiny_loaded(model, tokenizer, exits: tuple[int, ...] = (1, 3), name: str = "tiny") -> LoadedTarget:
    heads = ExitHeads.untrained(exits, model.config.hidden_size) if exits else None
    return LoadedTarget.build(name, model, tokenizer, heads)


@contextlib.contextmanager
def running_server(loaded: LoadedTarget, port: int | None = None, **settings) -> Iterator[str]:
    """Serve `loaded` on 127.0.0.1:<port> in a background thread; yields 'http://127.0.0.1:PORT'."""
    port = port or free_port()
    app = create_app(ServerSettings(port=port, **settings), loaded=loaded)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws_max_size=16 << 20)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


class ServerProcess:
    """`eespec serve` as a real process (e.g. to kill and restart it), one torch thread."""

    def __init__(self, target: str, port: int, api_key: str, exits: str = "1,3") -> None:
        self.target, self.port, self.api_key, self.exits = target, port, api_key, exits
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> ServerProcess:
        command = [sys.executable, "-m", "eespec", "serve", "--target", self.target, "--port", str(self.port)]
        command += [
            "--api-key",
            self.api_key,
            "--exits",
            self.exits,
            "--threads",
            "1",
            "--log-level",
            "warning",
        ]
        self.process = subprocess.Popen(command)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not become ready")
            time.sleep(0.1)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
