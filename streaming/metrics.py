"""Prometheus metrics of one server instance (its own registry, so several servers can share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

STEP_SECONDS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """Counters, gauges and histograms exported at /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions_active = Gauge("causalcast_sessions_active", "Sessions running", ["model"], registry=r)
        self.sessions_started = Counter("causalcast_sessions_started", "Sessions opened", ["model"], registry=r)
        self.sessions_refused = Counter(
            "causalcast_sessions_refused", "Sessions refused at start", ["model", "reason"], registry=r
        )
        self.cost_probes = Counter(
            "causalcast_cost_probes", "Stale step-cost estimates re-measured before a refusal", ["model"], registry=r
        )
        self.refusals = Counter(
            "causalcast_refusals",
            "Requests refused before a session or viewer existed (token, scope, origin)",
            ["endpoint", "reason"],
            registry=r,
        )
        self.chunks_produced = Counter("causalcast_chunks_produced", "Output chunks produced", ["model"], registry=r)
        self.late_chunks = Counter("causalcast_late_chunks", "Output chunks past their deadline", ["model"], registry=r)
        self.step_seconds = Histogram(
            "causalcast_step_seconds",
            "Duration of one batched model step",
            ["model"],
            buckets=STEP_SECONDS_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "causalcast_batch_size", "Sessions per model step", ["model"], buckets=BATCH_SIZE_BUCKETS, registry=r
        )
        self.errors = Counter("causalcast_errors", "Errors reported to clients", ["code"], registry=r)
        self.rate_limited = Counter(
            "causalcast_rate_limited",
            "Client messages over a rate limit: kind 'connection' waited for the connection's budget, "
            "a message type's were dropped",
            ["transport", "kind"],
            registry=r,
        )
        self.underruns = Counter(
            "causalcast_underruns",
            "Output frames a paced track had to fill (silence / repeated frame)",
            ["model", "kind"],
            registry=r,
        )
        self.dropped_output_chunks = Counter(
            "causalcast_dropped_output_chunks", "Chunks dropped because a client read too slowly", ["model"], registry=r
        )

        self.loop_busy = Gauge(
            "causalcast_event_loop_busy", "Share of wall time the event loop thread spent on CPU", registry=r
        )
        self.loop_demand = Gauge(
            "causalcast_event_loop_demand",
            "Share of wall time the event loop thread was on CPU or waiting on a run queue for one",
            registry=r,
        )
        self.loop_lag = Gauge("causalcast_event_loop_lag_seconds", "Worst recent lateness of loop wake-ups", registry=r)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
