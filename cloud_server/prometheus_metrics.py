"""Prometheus metrics with the names of DESIGN.md ("Cloud HTTP surface"); one registry per app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("eespec_requests_total", "Requests by route", ["route"], registry=r)
        self.generated_tokens = Counter(
            "eespec_generated_tokens_total", "Generated tokens by mode", ["mode"], registry=r
        )
        self.rounds = Counter("eespec_rounds_total", "Verification rounds (drafts)", registry=r)
        self.draft_tokens = Counter("eespec_draft_tokens_total", "Draft tokens received", registry=r)
        self.accepted_tokens = Counter("eespec_accepted_tokens_total", "Draft tokens accepted", registry=r)
        self.early_predictions = Counter(
            "eespec_early_predictions_total", "Early verdicts sent", ["layer"], registry=r
        )
        self.early_hits = Counter(
            "eespec_early_hits_total", "Early verdicts that matched the final verdict", ["layer"], registry=r
        )
        self.verify_seconds = Histogram(
            "eespec_verify_seconds", "Window verification time", buckets=LATENCY_BUCKETS, registry=r
        )
        self.prefill_seconds = Histogram(
            "eespec_prefill_seconds", "Prompt prefill time", buckets=LATENCY_BUCKETS, registry=r
        )
        self.active_sessions = Gauge("eespec_active_sessions", "Sessions with a live socket", registry=r)
        self.detached_sessions = Gauge(
            "eespec_detached_sessions", "Detached session records awaiting resume", registry=r
        )
        self.kv_cache_bytes = Gauge("eespec_kv_cache_bytes", "Bytes held by KV caches", registry=r)
        self.queue_depth = Gauge(
            "eespec_queue_depth", "Jobs waiting for or running on the worker", registry=r
        )
        self.errors = Counter("eespec_errors_total", "Errors sent, by code", ["code"], registry=r)
        # Beyond DESIGN's list: the cost figure of the benchmark harness (cloud busy seconds per token).
        self.busy_seconds = Counter(
            "eespec_busy_seconds_total",
            "Seconds the inference worker ran jobs (prefill, verification with exits, autoregressive steps, "
            "model loading)",
            registry=r,
        )
        # Which server process these figures are from: a client that reaches several replicas through one
        # proxy (`eespec serve --ray`) tells their scrapes apart by it (`eespec.bench.modes.scrape_busy_s`).
        self.server_info = Gauge(
            "eespec_server_info", "Always 1; labelled by server_id", ["server_id"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def snapshot(self) -> dict[str, float | dict[str, float]]:
        """The registry's current values by metric name (what `/metrics` renders, as JSON): a number, or
        {label value: number} for a labelled metric; histograms as their `_count` and `_sum`."""
        out: dict[str, float | dict[str, float]] = {}
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name.endswith("_created") or sample.name.endswith("_bucket"):
                    continue
                if sample.labels:
                    (label,) = sample.labels.values()
                    bucket = out.setdefault(sample.name, {})
                    assert isinstance(bucket, dict)
                    bucket[label] = sample.value
                else:
                    out[sample.name] = sample.value
        return out
