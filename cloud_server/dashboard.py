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
# The shell's files (path → folder, file, media type): served without the key — they hold no data, and the
# page asks for the key before it shows anything.
SHELL = {
    "/": (PAGE, "index.html", "text/html; charset=utf-8"),
    "/dashboard/cloud.js": (PAGE, "cloud.js", "text/javascript; charset=utf-8"),
    "/assets/common.js": (ASSETS, "common.js", "text/javascript; charset=utf-8"),
    "/assets/dashboard.css": (ASSETS, "dashboard.css", "text/css; charset=utf-8"),
}
OPEN_PATHS = tuple(SHELL)

router = APIRouter()


def _shell_route(path: str) -> None:
    directory, name, media_type = SHELL[path]

    async def serve() -> Response:
        body = (directory / name).read_bytes()
        return Response(body, media_type=media_type, headers={"Cache-Control": "no-store"})

    router.add_api_route(path, serve, methods=["GET"], include_in_schema=False)


for _path in SHELL:
    _shell_route(_path)


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
