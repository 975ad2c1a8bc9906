"""The daemon's status server (DESIGN.md, "Status server"): loopback by default, `Authorization: Bearer KEY`.

GET /status (the DESIGN.md JSON), GET /camera.jpg, POST /estop, POST /estop/reset, GET /metrics.
It runs in its own thread (uvicorn) and talks to the daemon only through thread-safe calls.
"""

from __future__ import annotations

import hmac
import threading
import time
from typing import Any, Protocol

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response


class StatusSource(Protocol):
    def status(self) -> dict[str, Any]: ...
    def camera_jpeg(self) -> bytes | None: ...
    def estop(self, reason: str = "http") -> None: ...
    def estop_reset(self) -> bool: ...


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def create_status_app(source: StatusSource, metrics: Any, api_key: str | None = None) -> FastAPI:
    app = FastAPI(title="eespec robot", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def require_key(request: Request, call_next):
        if api_key:
            header = request.headers.get("authorization", "")
            given = header[7:] if header.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(given.encode(), api_key.encode()):
                return _error(401, "unauthorized", "a valid `Authorization: Bearer KEY` header is required")
        return await call_next(request)

    @app.get("/status")
    async def status() -> JSONResponse:
        return JSONResponse(source.status())

    @app.get("/camera.jpg")
    async def camera() -> Response:
        jpeg = source.camera_jpeg()
        if jpeg is None:
            return _error(503, "no_frame", "no camera frame yet")
        return Response(jpeg, media_type="image/jpeg")

    @app.post("/estop")
    async def estop() -> JSONResponse:
        source.estop("http")
        return JSONResponse({"estop": True})

    @app.post("/estop/reset")
    async def estop_reset() -> JSONResponse:
        released = source.estop_reset()
        return JSONResponse({"estop": False, "released": released})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    return app


class StatusServer:
    """uvicorn in a background thread on `host:port` (127.0.0.1 by default)."""

    def __init__(self, app: FastAPI, port: int, host: str = "127.0.0.1") -> None:
        self.host, self.port = host, port
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="robot-status", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> StatusServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"the status server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)

    def __enter__(self) -> StatusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
