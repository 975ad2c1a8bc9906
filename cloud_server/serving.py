"""Running the app under uvicorn with the server's bounds: header timeouts and a bounded graceful shutdown.

`eespec serve` and the test servers both use `make_server`, so what is tested is what runs.
"""

from __future__ import annotations

import asyncio
import logging
import socket

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from cloud_server.settings import ServerSettings
from cloud_server.state import ServerState

log = logging.getLogger("eespec.server")


def header_timeout_protocol(timeout_s: float) -> type:
    """uvicorn's HTTP protocol, closing a connection whose request headers are not complete within
    `timeout_s` of its opening (or of the request's first byte on a kept-alive connection): a client
    holding connections open with unfinished headers (slowloris) holds nothing for long. Built on the
    httptools protocol (uvicorn[standard]), whose parser reports when a message begins and its headers end.
    """

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
            super().connection_made(transport)
            self._arm_header_timer()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm_header_timer()

        def on_headers_complete(self) -> None:
            self._disarm_header_timer()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            self._disarm_header_timer()
            self._header_timer = self.loop.call_later(timeout_s, self._header_timeout)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutProtocol


class EespecServer(uvicorn.Server):
    """On SIGTERM (or `should_exit`): no new work, streams end with a `shutting_down` event between two
    tokens, websockets close with 1012 (uvicorn), and whatever is still open after
    `settings.shutdown_timeout_s` is cancelled."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.state = state

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.state.draining = True
        log.info("shutting down: streams end now, at most %.0f s", self.state.settings.shutdown_timeout_s)
        await super().shutdown(sockets)


def make_server(app: FastAPI, settings: ServerSettings, **config: object) -> EespecServer:
    """A uvicorn server for `app` with the settings' TLS files, header timeout and shutdown bound."""
    options: dict[str, object] = {
        "host": settings.host,
        "port": settings.port,
        "ssl_keyfile": settings.ssl_keyfile,
        "ssl_certfile": settings.ssl_certfile,
        "ws_max_size": 4 * settings.max_frame_bytes,
        "http": header_timeout_protocol(settings.header_timeout_s),
        "timeout_graceful_shutdown": max(1, round(settings.shutdown_timeout_s)),
        "timeout_keep_alive": 5,
    }
    options.update(config)
    return EespecServer(uvicorn.Config(app, **options), app.state.eespec)
