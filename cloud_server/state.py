"""What every route of one server shares: settings, the loaded target, the worker, sessions, metrics."""

from __future__ import annotations

import hmac
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cloud_server.engine import InferenceWorker, LoadedTarget, SessionStore
from cloud_server.prometheus_metrics import ServerMetrics
from cloud_server.settings import ServerSettings
from shared.errors import ProtocolError

ANONYMOUS = "anonymous"  # the owner of every slot when the server runs with --insecure-no-auth


class SlotsFull(ProtocolError):
    """`limit_exceeded` for capacity: the server's slots (HTTP 503) or one key's share (HTTP 429)."""

    def __init__(self, message: str, *, per_key: bool) -> None:
        super().__init__("limit_exceeded", message, retryable=True)
        self.per_key = per_key


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The token of the one `Authorization: Bearer TOKEN` header; None when absent or ambiguous.

    The same rule for HTTP and the websocket upgrade. The scheme is case-insensitive (RFC 7235); two
    `Authorization` headers are refused rather than guessing which one counts.
    """
    values = [value for name, value in headers if name.lower() == b"authorization"]
    if len(values) != 1:
        return None
    scheme, _, token = values[0].decode("latin-1").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def header_values(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> list[str]:
    return [value.decode("latin-1") for key, value in headers if key.lower() == name]


@dataclass(eq=False)
class Slot:
    """One generation's claim on capacity (a websocket session or an HTTP generation)."""

    owner: str
    state: ServerState
    released: bool = False

    def release(self) -> None:
        """Idempotent."""
        if not self.released:
            self.released = True
            self.state.slots.discard(self)


@dataclass
class ServerState:
    settings: ServerSettings
    worker: InferenceWorker | None = None  # type: ignore[assignment]  # built from settings when None
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    loaded: LoadedTarget | None = None
    load_error: str | None = None
    # Autoregressive generations of the HTTP routes, for the KV-cache gauge.
    http_generations: set[Any] = field(default_factory=set)
    slots: set[Slot] = field(default_factory=set)
    # Set on SIGTERM: streams end with an error event and no new work is admitted.
    draining: bool = False
    # Which server process (e.g. which replica of `eespec serve --ray`) answered: `welcome.server_id` and
    # /health. "<pid>-<random>": the pid for an operator's `ps`, the suffix tells a restarted process apart.
    server_id: str = field(default_factory=lambda: f"{os.getpid()}-{uuid.uuid4().hex[:8]}")
    sessions: SessionStore = field(init=False)

    def __post_init__(self) -> None:
        self.metrics.server_info.labels(server_id=self.server_id).set(1)
        self.sessions = SessionStore(
            max_sessions=self.settings.max_sessions,
            ttl_s=self.settings.ttl_s,
            max_detached=self.settings.max_detached,
        )
        if self.worker is None:
            self.worker = InferenceWorker(token_budget=self.settings.step_token_budget)
        self.worker.on_busy = self.metrics.busy_seconds.inc

    @property
    def ready(self) -> bool:
        return self.loaded is not None

    def key_owner(self, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        """Who is calling: the matching key's index ("key0", ...); None when not authorized."""
        keys = self.settings.api_key
        if not keys:
            return ANONYMOUS if self.settings.insecure_no_auth else None
        token = bearer_token(headers)
        if token is None:
            return None
        given = token.encode()
        owner = None
        for i, key in enumerate(keys):  # every key compared: the time does not tell which one matched
            if hmac.compare_digest(given, key.encode()):
                owner = f"key{i}"
        return owner

    def origin_allowed(self, headers: Iterable[tuple[bytes, bytes]]) -> bool:
        """No `Origin` (a native client) or one that is explicitly allowed (a browser page)."""
        origins = header_values(headers, b"origin")
        return not origins or (len(origins) == 1 and origins[0] in self.settings.allowed_origins)

    def acquire_slot(self, owner: str) -> Slot:
        """Capacity for one more generation, or `limit_exceeded` (retryable: try again later)."""
        settings = self.settings
        if self.draining:
            raise ProtocolError("limit_exceeded", "the server is shutting down", retryable=False)
        if len(self.slots) >= settings.max_sessions:
            raise SlotsFull(f"server at max_sessions ({settings.max_sessions})", per_key=False)
        delay = self.worker.queue_delay_s
        if delay > settings.max_queue_delay_s:  # admission: new generations wait until the queue drains
            raise SlotsFull(
                f"the server is saturated (queueing delay {delay:.1f} s > {settings.max_queue_delay_s} s)",
                per_key=False,
            )
        if sum(slot.owner == owner for slot in self.slots) >= settings.per_key_limit:
            raise SlotsFull(
                f"this API key holds its limit of {settings.per_key_limit} sessions", per_key=True
            )
        slot = Slot(owner, self)
        self.slots.add(slot)
        return slot

    def refresh_gauges(self) -> None:
        self.sessions.expire()
        self.metrics.active_sessions.set(len(self.sessions.active))
        self.metrics.detached_sessions.set(len(self.sessions.detached))
        http_bytes = sum(g.kv_bytes for g in list(self.http_generations))
        self.metrics.kv_cache_bytes.set(self.sessions.kv_bytes + http_bytes)
        self.metrics.queue_depth.set(self.worker.queue_depth)
