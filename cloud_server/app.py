"""The FastAPI application: health, metrics, the speculation websocket and the OpenAI-compatible routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from cloud_server.engine import LoadedTarget, load_target
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
    """An app serving `loaded`, or loading the target named in `settings` in the background."""
    settings = settings or ServerSettings()
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

    app.add_middleware(ApiKeyMiddleware, state=state)

    @app.get("/health")
    async def health() -> JSONResponse:
        if state.load_error:
            return JSONResponse({"status": "failed", "error": state.load_error}, status_code=503)
        if not state.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ok", "model": state.loaded.name, "exit_layers": exit_layers(state)})

    @app.get("/metrics")
    async def metrics() -> Response:
        state.refresh_gauges()
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    app.include_router(ws_router)
    app.include_router(openai_router)
    return app


class ApiKeyMiddleware:
    """`Authorization: Bearer KEY` on every HTTP route but /health (401 JSON otherwise).

    Pure ASGI rather than `@app.middleware("http")`, which would hide client disconnects from the routes.
    The websocket route checks the key itself, to refuse the upgrade with 403.
    """

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] != "/health":
            headers = dict(scope.get("headers") or [])
            authorization = headers.get(b"authorization", b"").decode("latin-1") or None
            if not self.state.authorized(authorization):
                self.state.metrics.errors.labels(code="unauthorized").inc()
                error = {"code": "unauthorized", "message": "missing or wrong API key", "type": "auth_error"}
                await JSONResponse({"error": error}, status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


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
    except Exception as exc:  # reported on /health; the process stays up to say why
        state.load_error = f"{type(exc).__name__}: {exc}"
        log.exception("loading the target failed")
