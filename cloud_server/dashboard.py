"""The cloud server's dashboard (issue 18): `GET /` is a static page shell (no data; open, like the robot's),
`GET /v1/dashboard` the figures it shows, behind the API key, read from the same registry as `/metrics`.

The page polls `/v1/dashboard` once a second (one small JSON read; the figures are counters, so the page
derives rates such as rounds per second from two consecutive reads).
"""

from __future__ import annotations

import time
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

PAGE = resources.files("cloud_server") / "dashboard"
ASSETS = resources.files("shared") / "dashboard_assets"
# The shell's files: served without the key (they hold no data; the page asks for the key first).
OPEN_PATHS = ("/", "/dashboard/cloud.js", "/assets/common.js", "/assets/dashboard.css")

router = APIRouter()


def _static(directory, name: str, media_type: str) -> Response:
    body = (directory / name).read_bytes()
    return Response(body, media_type=media_type, headers={"Cache-Control": "no-store"})


@router.get("/", include_in_schema=False)
async def page() -> Response:
    return _static(PAGE, "index.html", "text/html; charset=utf-8")


@router.get("/dashboard/cloud.js", include_in_schema=False)
async def page_script() -> Response:
    return _static(PAGE, "cloud.js", "text/javascript; charset=utf-8")


@router.get("/assets/common.js", include_in_schema=False)
async def common_script() -> Response:
    return _static(ASSETS, "common.js", "text/javascript; charset=utf-8")


@router.get("/assets/dashboard.css", include_in_schema=False)
async def stylesheet() -> Response:
    return _static(ASSETS, "dashboard.css", "text/css; charset=utf-8")


@router.get("/v1/dashboard", include_in_schema=False)
async def figures(request: Request) -> JSONResponse:
    state = request.app.state.eespec
    state.refresh_gauges()
    values = state.metrics.snapshot()
    loaded = state.loaded
    return JSONResponse(
        {
            "t": time.time(),
            "model": loaded.name if loaded is not None else None,
            "exit_layers": list(loaded.early_exit.exit_layers) if loaded is not None else [],
            "ready": state.ready,
            "metrics": values,
        }
    )
