"""Scale-out on Ray Serve: N replicas of the cloud server behind Ray's HTTP proxy (issue 17, item 3).

`eespec serve --ray --replicas N` starts a local Ray instance, deploys `EespecReplica` N times and serves
on Ray's proxy at the settings' host and port. Each replica is the whole app of `create_app` (its own
target, scheduler, sessions and metrics) in its own Ray actor process; the proxy routes each HTTP request,
and each websocket for its whole life, to one replica.

Replicas share nothing. A `resume` that reaches another replica than the one that held the session (its
own was killed, or the proxy picked another) is answered `session_not_found`, and the edge restarts the
generation from its committed tokens (`EdgeClient._restart`, `start.generated`), which stays exact: greedy
token for token, sampled with fresh uniforms drawn from (seed, committed length). `welcome.server_id` and
`/health`'s `server_id` say which replica answered.

What Ray's proxy does not do that `eespec serve` does (`cloud_server.serving`): the header timeout, the
bounded graceful shutdown with `shutting_down` stream events, and TLS (terminate TLS in front of it).
Ray is an optional extra (`pip install -e ".[ray]"`): nothing here is imported by the default server.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from cloud_server.settings import ServerSettings

log = logging.getLogger("eespec.server")

APP_NAME = "eespec"


def _ray_serve():
    try:
        import ray
        from ray import serve
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError('Ray Serve is not installed: pip install -e ".[ray]"') from exc
    return ray, serve


def deployment(settings: ServerSettings, replicas: int):
    """The bound Ray Serve application: `replicas` copies of the app for `settings`."""
    if replicas < 1:
        raise ValueError(f"--replicas must be at least 1, not {replicas}")
    _, serve = _ray_serve()

    @serve.ingress()
    class EespecReplica:
        """One replica: `create_app(settings)`, built on the replica (the app and its model never pickle)."""

        def __init__(self, settings_fields: dict[str, Any]) -> None:
            self.settings = ServerSettings(**settings_fields)

        def __serve_build_asgi_app__(self):
            from cloud_server.app import create_app

            return create_app(self.settings)

    # No CPU reservation: a replica's torch threads are `settings.threads`; Ray must not refuse to place
    # two replicas on a 2-core machine. One request at a time per websocket is the protocol's own limit.
    replica = serve.deployment(
        EespecReplica,
        name="EespecReplica",
        num_replicas=replicas,
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=max(8, settings.max_sessions),
        health_check_period_s=2,
    )
    return replica.bind(settings.model_dump(mode="json"))


def serve_on_ray(settings: ServerSettings, replicas: int) -> None:
    """Run the deployment until SIGTERM / SIGINT, then shut Serve and Ray down."""
    if settings.ssl_certfile or settings.ssl_keyfile:
        raise ValueError("--ray does not serve TLS: terminate TLS in front of Ray's proxy (docs/deploy.md)")
    ray, serve = _ray_serve()
    app = deployment(settings, replicas)
    ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        log.info("serving %d replica(s) on http://%s:%d", replicas, settings.host, settings.port)
        while not stop.wait(0.5):  # a timed wait, so the signal handler runs promptly
            pass
    finally:
        serve.shutdown()
        ray.shutdown()
