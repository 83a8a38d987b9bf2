"""Prometheus metrics, one registry per app so several servers in one process (tests) keep separate counts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

if TYPE_CHECKING:
    from server.functions.calllog import CallLog
    from server.functions.runner import CallRecord

__all__ = ["Metrics"]

_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120, 600)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.connections = Gauge("ripple_connections", "Open sync WebSocket connections", registry=r)
        self.subscriptions = Gauge("ripple_subscriptions", "Subscribed queries across all sockets", registry=r)
        self.query_instances = Gauge("ripple_query_instances", "Distinct shared query instances", registry=r)
        self.reruns = Counter(
            "ripple_query_reruns_total",
            "Query instance runs by the hub (first results and re-runs)",
            ["path"],
            registry=r,
        )
        self.invalidations = Counter(
            "ripple_invalidation_matches_total", "Query instances a commit's changes matched", registry=r
        )
        # Labels stay bounded: `path` is a registered function's or "unknown"; `outcome` is "ok", a RippleError's
        # code, "database" or "uncaught"; transport is http, websocket, hub or internal.
        self.function_calls = Counter(
            "ripple_function_calls_total",
            "Function calls, every transport (hub runs included)",
            ["path", "kind", "transport", "outcome"],
            registry=r,
        )
        self.function_duration = Histogram(
            "ripple_function_duration_seconds",
            "Function call duration, validation to encoded result (a mutation's COMMIT included)",
            ["kind", "transport"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.mutation_retries = Counter(
            "ripple_mutation_retries_total", "Mutation re-runs after a serialization failure", registry=r
        )
        self.transition_latency = Histogram(
            "ripple_transition_latency_seconds",
            "Commit (NOTIFY received) to Transition sent",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.hub_lag = Gauge(
            "ripple_hub_lag_seconds",
            "Age of the oldest commit the hub has not processed (0 when caught up), measured every second",
            registry=r,
        )
        self.hub_lag_commits = Gauge(
            "ripple_hub_lag_commits", "Commits made that the hub has not processed yet", registry=r
        )
        self.database_up = Gauge("ripple_database_up", "1 while the database answers the hub's check", registry=r)
        self.hub_settles = Counter(
            "ripple_hub_settles_total",
            "Rounds whose first snapshot could lack a commit, so the hub took the clock key and read again",
            registry=r,
        )
        self.hub_quiet = Counter(
            "ripple_hub_quiet_rounds_total",
            "Rounds whose announced changes touched no subscribed query (no database query at all)",
            registry=r,
        )
        self.hub_ts = Gauge("ripple_hub_processed_ts", "Newest commit ts the hub has processed", registry=r)

    def call_finished(self, record: CallRecord) -> None:
        path = record.path if record.known else "unknown"
        self.function_calls.labels(path, record.kind, record.transport, record.outcome).inc()
        self.function_duration.labels(record.kind, record.transport).observe(record.duration_s)

    def line(self, call: CallLog, level: str, text: str) -> None:
        """Function log lines are not counted."""

    async def endpoint(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)
