"""The FastAPI application: health, metrics, the speculation websocket and the OpenAI-compatible routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloud_server.dashboard import OPEN_PATHS
from cloud_server.dashboard import router as dashboard_router
from cloud_server.engine import LoadedTarget, load_target
from cloud_server.http_api import add_request_bodies
from cloud_server.http_api import router as openai_router
from cloud_server.settings import ServerSettings
from cloud_server.state import ServerState
from cloud_server.ws import router as ws_router

log = logging.getLogger("eespec.server")


def create_app(
    settings: ServerSettings | None = None,
    *,
    loaded: LoadedTarget | None = None,
    loader: Callable[[ServerSettings], LoadedTarget] | None = None,
) -> FastAPI:
    """An app serving `loaded`, or loading the target named in `settings` in the background.

    Secure by default: without an API key it refuses to exist unless `settings.insecure_no_auth`.
    """
    settings = settings or ServerSettings()
    check_secure(settings)
    if not settings.api_key:
        log.warning("INSECURE: --insecure-no-auth: every route, the websocket included, is open to anyone")
    state = ServerState(settings=settings, loaded=loaded)
    loader = loader or load_from_settings

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        task = None
        if state.loaded is None:
            task = asyncio.create_task(_load(state, loader))
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
            for session_id in list(state.sessions.active):
                state.sessions.detach(session_id)
            state.worker.shutdown()

    app = FastAPI(title="eespec cloud server", version="0.1.0", lifespan=lifespan)
    app.state.eespec = state

    app.add_middleware(BodyLimitMiddleware, state=state)
    app.add_middleware(ApiKeyMiddleware, state=state)

    @app.get("/health")
    async def health() -> JSONResponse:
        if state.load_error:  # why is in the server's log, not on an open route
            return JSONResponse({"status": "failed"}, status_code=503)
        if not state.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        body = {"status": "ok", "model": state.loaded.name, "exit_layers": exit_layers(state)}
        return JSONResponse(body | {"server_id": state.server_id})

    @app.get("/metrics")
    async def metrics() -> Response:
        state.refresh_gauges()
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Routing errors in the same OpenAI shape as every other error."""
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_frame")
        error = {"message": str(exc.detail), "type": "invalid_request_error", "code": code}
        return JSONResponse({"error": error}, status_code=exc.status_code, headers=exc.headers)

    app.include_router(ws_router)
    app.include_router(openai_router)
    app.include_router(dashboard_router)

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            app.openapi_schema = add_request_bodies(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


class InsecureConfig(ValueError):
    """The server would start with every route open and nobody asked for that."""


def check_secure(settings: ServerSettings) -> None:
    """Raise `InsecureConfig` unless the settings hold a key or say `insecure_no_auth`."""
    if not settings.api_key and not settings.insecure_no_auth:
        raise InsecureConfig("no API key: give --api-key (or EESPEC_API_KEY), or --insecure-no-auth")


class ApiKeyMiddleware:
    """One rule for HTTP and the websocket upgrade: a browser `Origin` that is not allowed is refused
    (403), then `Authorization: Bearer KEY` on every route but /health (401 JSON; the upgrade is refused
    with 403). The matching key's owner goes to `scope["state"]` for the per-key limits.

    Pure ASGI rather than `@app.middleware("http")`, which would hide client disconnects from the routes.
    """

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers") or []
        if not self.state.origin_allowed(headers):
            await self._refuse(scope, receive, send, 403, "forbidden_origin", "this Origin is not allowed")
            return
        open_path = scope["path"] == "/health" or scope["path"] in OPEN_PATHS
        if open_path and scope["type"] == "http" and scope.get("method", "GET") in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        owner = self.state.key_owner(headers)
        if owner is None:
            await self._refuse(scope, receive, send, 401, "unauthorized", "missing or wrong API key")
            return
        scope.setdefault("state", {})["eespec_owner"] = owner
        await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int, kind: str, message: str):
        self.state.metrics.errors.labels(code="unauthorized").inc()
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # before accept: HTTP 403
            return
        error = {"code": "unauthorized", "message": message, "type": kind}
        await JSONResponse({"error": error}, status_code=status)(scope, receive, send)


class BodyLimitMiddleware:
    """HTTP request bodies over `max_body_bytes` answer 413 before they are read: a declared
    `Content-Length` is checked up front, a chunked body as it arrives."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.state.settings.max_body_bytes
        lengths = [v for k, v in scope.get("headers") or [] if k.lower() == b"content-length"]
        try:
            declared = max((int(v) for v in lengths), default=0)
        except ValueError:
            declared = limit + 1
        if declared > limit:
            await self._too_large(scope, receive, send, limit)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except BodyTooLarge:
            await self._too_large(scope, receive, send, limit)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        self.state.metrics.errors.labels(code="too_large").inc()
        error = {"code": "too_large", "message": f"body over {limit} bytes", "type": "invalid_request_error"}
        await JSONResponse({"error": error}, status_code=413, headers={"Connection": "close"})(
            scope, receive, send
        )


class BodyTooLarge(Exception):
    pass


def load_from_settings(settings: ServerSettings) -> LoadedTarget:
    """The engine's loader, called with what the server's settings say."""
    return load_target(
        settings.target,
        device=settings.device,
        exit_layers=settings.exit_layers,
        exits_dir=settings.exits_dir,
        threads=settings.threads,
        dtype=settings.dtype,
    )


def exit_layers(state: ServerState) -> list[int]:
    return list(state.loaded.early_exit.exit_layers) if state.loaded else []


async def _load(state: ServerState, loader: Callable[[ServerSettings], LoadedTarget]) -> None:
    try:
        state.loaded = await state.worker.run(loader, state.settings)
        log.info("target %s ready", state.loaded.name)
    except Exception as exc:  # /health says "failed"; the log says why; the process stays up
        state.load_error = f"{type(exc).__name__}: {exc}"
        log.exception("loading the target failed")
