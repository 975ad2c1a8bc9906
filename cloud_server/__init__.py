"""The cloud side. `cloud_server.engine` is the target engine (no web framework); this package around it
is the web surface: the FastAPI app, the speculation websocket, the OpenAI-compatible routes, health,
metrics, auth and settings.

Importing `cloud_server` (and so `cloud_server.engine`) stays free of FastAPI: the web pieces load on
first use of `create_app` / `ServerSettings`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cloud_server.app import create_app
    from cloud_server.settings import ServerSettings

__all__ = ["ServerSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from cloud_server.app import create_app

        return create_app
    if name == "ServerSettings":
        from cloud_server.settings import ServerSettings

        return ServerSettings
    raise AttributeError(f"module 'cloud_server' has no attribute {name!r}")
