"""Prometheus metrics of the daemon, in a registry of its own (several daemons may share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class RobotMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ticks = Counter("robot_ticks", "Control ticks run", registry=r)
        self.command = Gauge(
            "robot_command", "Commanded velocity after the safety gate", ["axis"], registry=r
        )
        self.velocity = Gauge("robot_velocity", "Measured body velocity", ["axis"], registry=r)
        self.queue_len = Gauge("robot_queue_len", "Actions queued or running", registry=r)
        self.estop = Gauge("robot_estop", "1 while the e-stop is latched", registry=r)
        self.link_up = Gauge("robot_link_up", "1 while the link to the cloud is up", registry=r)
        self.safety_events = Counter("robot_safety_events", "Safety events", ["name"], registry=r)
        self.plans = Counter("robot_plans", "Planning calls", ["mode"], registry=r)
        self.plan_seconds = Histogram(
            "robot_plan_seconds",
            "Planning latency",
            ["mode"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32),
            registry=r,
        )
        self.collisions = Gauge("robot_collisions", "Collisions counted by the simulator", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
