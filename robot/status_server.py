"""The daemon's status server (DESIGN.md, "Status server"): loopback by default, `Authorization: Bearer KEY`.

GET /status (the DESIGN.md JSON), GET /camera.jpg, POST /estop, POST /estop/reset, GET /metrics.
The dashboard (issue 18): `GET /` and `GET /dashboard/*` are the page's static shell, open because they
hold no data; the page keeps the key in sessionStorage and sends it as a Bearer header on its fetches, and
on the live websocket `/ws` as the first message (a browser cannot set headers on a websocket), so the key
never appears in a URL. It runs in its own thread (uvicorn) and talks to the daemon only through
thread-safe calls; each browser reads the daemon's event feed through its own bounded queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import threading
import time
from importlib import resources
from typing import Any, Protocol

import uvicorn
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from robot.event_feed import EventFeed

DASHBOARD_DIR = resources.files("robot") / "dashboard"
DASHBOARD_ASSETS = resources.files("shared") / "dashboard_assets"  # common.js and the stylesheet
KEY_TIMEOUT_S = 5.0  # a websocket that has not sent its key by then is closed


class StatusSource(Protocol):
    def status(self) -> dict[str, Any]: ...
    def camera_jpeg(self) -> bytes | None: ...
    def estop(self, reason: str = "http") -> None: ...
    def estop_reset(self) -> bool: ...

    # For the dashboard: the live feed and what a browser needs when it joins.
    feed: EventFeed

    def dashboard_hello(self) -> dict[str, Any]: ...


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def create_status_app(source: StatusSource, metrics: Any, api_key: str | None = None) -> FastAPI:
    app = FastAPI(title="eespec robot", docs_url=None, redoc_url=None, openapi_url=None)

    def key_ok(given: str) -> bool:
        return not api_key or hmac.compare_digest(given.encode(), api_key.encode())

    @app.middleware("http")
    async def require_key(request: Request, call_next):
        path = request.url.path
        if request.method == "GET" and (path == "/" or path.startswith(("/dashboard/", "/assets/"))):
            return await call_next(request)  # the page shell: static, no data
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

    @app.get("/")
    async def page() -> Response:
        html = (DASHBOARD_DIR / "index.html").read_text(encoding="utf-8")
        return Response(html, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-store"})

    app.mount("/dashboard", StaticFiles(directory=str(DASHBOARD_DIR)), name="dashboard")
    app.mount("/assets", StaticFiles(directory=str(DASHBOARD_ASSETS)), name="assets")

    @app.websocket("/ws")
    async def live(ws: WebSocket) -> None:
        """The live feed: the first message is the key; then `hello`, then the daemon's events."""
        await ws.accept()
        try:
            first = await asyncio.wait_for(ws.receive_text(), KEY_TIMEOUT_S)
        except (TimeoutError, WebSocketDisconnect):
            await _close(ws, "unauthorized", "send the API key as the first message")
            return
        if not key_ok(_key_of(first)):
            await _close(ws, "unauthorized", "a valid API key is required")
            return
        sub, history = source.feed.subscribe()
        reader: asyncio.Task | None = None
        try:
            hello = source.dashboard_hello() | {"history": history}
            await ws.send_text(json.dumps({"kind": "hello", **hello}))
            reader = asyncio.create_task(_drain_incoming(ws))
            while not reader.done():
                batch = await _next_or_gone(sub.next_batch(), reader)
                if batch is None:
                    break
                if sub.dropped:  # the browser fell behind: it is told how much it missed
                    batch.append({"kind": "dropped", "events": sub.dropped})
                    sub.dropped = 0
                await ws.send_text(json.dumps(batch))
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            sub.close()
            if reader is not None:
                reader.cancel()

    return app


def _key_of(message: str) -> str:
    """`{"key": KEY}` or the bare key."""
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        return str(json.loads(message)["key"])
    return message.strip()


async def _close(ws: WebSocket, code: str, message: str) -> None:
    with contextlib.suppress(Exception):
        await ws.send_text(json.dumps({"kind": "error", "error": {"code": code, "message": message}}))
        await ws.close(code=1008)


async def _drain_incoming(ws: WebSocket) -> None:
    """Reads (and ignores) what the browser sends, so its going away is noticed at once."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            await ws.receive_text()


async def _next_or_gone(batch: Any, reader: asyncio.Task) -> list[dict[str, Any]] | None:
    waiter = asyncio.ensure_future(batch)
    await asyncio.wait({waiter, reader}, return_when=asyncio.FIRST_COMPLETED)
    if waiter.done():
        return waiter.result()
    waiter.cancel()
    return None


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
