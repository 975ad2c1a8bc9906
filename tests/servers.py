"""Real uvicorn servers on loopback for tests: in a thread (shared models) or as a subprocess."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from cloud_server.app import create_app
from cloud_server.engine.exits import ExitHeads
from cloud_server.engine.loading import LoadedTarget
from cloud_server.serving import make_server
from cloud_server.settings import ServerSettings
from eespec.processes import ServerProcess, free_port

__all__ = ["ServerProcess", "free_port", "running_server", "tiny_loaded"]


def tiny_loaded(model, tokenizer, exits: tuple[int, ...] = (1, 3), name: str = "tiny") -> LoadedTarget:
    heads = ExitHeads.untrained(exits, model.config.hidden_size) if exits else None
    return LoadedTarget.build(name, model, tokenizer, heads)


@contextlib.contextmanager
def running_server(loaded: LoadedTarget, port: int | None = None, **settings) -> Iterator[str]:
    """Serve `loaded` on 127.0.0.1:<port> in a background thread; yields 'http://127.0.0.1:PORT'."""
    port = port or free_port()
    server_settings = ServerSettings(port=port, **settings)
    app = create_app(server_settings, loaded=loaded)
    server = make_server(app, server_settings, log_level="warning", ws_max_size=16 << 20)
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
