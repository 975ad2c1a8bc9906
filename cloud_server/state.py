"""What every route of one server shares: settings, the loaded target, the worker, sessions, metrics."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Any

from cloud_server.engine import InferenceWorker, LoadedTarget, SessionStore
from cloud_server.prometheus_metrics import ServerMetrics
from cloud_server.settings import ServerSettings


@dataclass
class ServerState:
    settings: ServerSettings
    worker: InferenceWorker = field(default_factory=InferenceWorker)
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    loaded: LoadedTarget | None = None
    load_error: str | None = None
    # Autoregressive generations of the HTTP routes, for the KV-cache gauge.
    http_generations: set[Any] = field(default_factory=set)
    sessions: SessionStore = field(init=False)

    def __post_init__(self) -> None:
        self.sessions = SessionStore(max_sessions=self.settings.max_sessions, ttl_s=self.settings.ttl_s)
        self.worker.on_busy = self.metrics.busy_seconds.inc

    @property
    def ready(self) -> bool:
        return self.loaded is not None

    def authorized(self, authorization: str | None) -> bool:
        """`Authorization: Bearer KEY` against the configured keys; open when none are configured."""
        keys = self.settings.api_key
        if not keys:
            return True
        if not authorization or not authorization.startswith("Bearer "):
            return False
        given = authorization.removeprefix("Bearer ").strip().encode()
        return any(hmac.compare_digest(given, key.encode()) for key in keys)

    def refresh_gauges(self) -> None:
        self.sessions.expire()
        self.metrics.active_sessions.set(len(self.sessions.active))
        self.metrics.detached_sessions.set(len(self.sessions.detached))
        http_bytes = sum(g.kv_bytes for g in list(self.http_generations))
        self.metrics.kv_cache_bytes.set(self.sessions.kv_bytes + http_bytes)
        self.metrics.queue_depth.set(self.worker.queue_depth)
