"""Admin-only JSON for what the console shows that is not data: `GET /api/admin/health`, `/crons`, `/functions`.

Health figures live in this process (the metrics registry, the hub's counters) and change without any commit, so
no subscription can carry them: the console polls this endpoint (every 2 s) instead. It returns counters, not
rates, with the server's monotonic clock; the view computes rounds and re-runs per second from the differences
between two polls, so a missed poll widens the window instead of skewing the rate.

The declared cron jobs are code, read at start (server/crons.py), so they come from the process too; their runs
are data, live through `_system/platform:cronRuns` (server/admin/platform.py). The functions are code as well: the
list is the registry serving now (after a `ripple dev` reload, the new one), not a query.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.admin import SYSTEM_PREFIX
from server.crons import CronJob, CronSchedule
from server.errors import RequestError
from server.http_api import caller_from_header

if TYPE_CHECKING:
    from server.app import Services

__all__ = ["cron_job", "health_figures", "routes"]


def _counter_total(counter: Counter) -> float:
    """A counter's value summed over its labels, as /metrics shows them."""
    return sum(
        sample.value for metric in counter.collect() for sample in metric.samples if sample.name.endswith("_total")
    )


def health_figures(services: Services) -> dict[str, Any]:
    """The figures of /metrics the console shows, read now."""
    metrics = services.metrics
    hub = services.hub

    def gauge(name: str) -> float:
        value = metrics.registry.get_sample_value(name)
        return float(value) if value is not None else 0.0

    last = hub.watch.last
    return {
        "monotonicS": time.monotonic(),
        "sockets": int(gauge("ripple_connections")),
        "subscriptions": int(gauge("ripple_subscriptions")),
        "queryInstances": int(gauge("ripple_query_instances")),
        "hubLagSeconds": gauge("ripple_hub_lag_seconds"),
        "hubLagCommits": int(gauge("ripple_hub_lag_commits")),
        "databaseUp": bool(gauge("ripple_database_up")) if last is not None else None,
        "processedTs": hub.processed_ts,
        "listen": hub.listen_mode,
        # Counters since the process started; rates are their differences over time (in the view).
        "rounds": hub.rounds,  # the hub's own count: rounds that processed a commit or delivered something
        "quietRounds": _counter_total(metrics.hub_quiet),
        "reruns": _counter_total(metrics.reruns),
        "functionCalls": _counter_total(metrics.function_calls),
        "version": services.version,
    }


def cron_job(job: CronJob, now_ms: float) -> dict[str, Any]:
    """A declared job as the console shows it: what it runs, when, and its next tick after `now_ms`."""
    schedule: dict[str, Any]
    if isinstance(job.schedule, CronSchedule):
        schedule = {"kind": "cron", "expression": job.schedule.expression}
    else:
        schedule = {"kind": "interval", "everyMs": job.schedule.every_ms}
    return {
        "name": job.name,
        "function": job.path,
        "args": job.args,
        "schedule": schedule,
        "nextRun": job.schedule.next_after(now_ms),
    }


async def _admin(request: Request) -> Services | Response:
    services: Services = request.app.state.services
    try:
        caller = await caller_from_header(services, request.headers.get("authorization"))
    except RequestError as exc:
        return JSONResponse({"code": exc.code, "message": exc.message}, status_code=exc.http_status)
    if not caller.is_admin:
        return JSONResponse(
            {"code": "Unauthenticated", "message": "This needs the admin key: send Authorization: Convex <admin key>."},
            status_code=401,
        )
    return services


async def health(request: Request) -> Response:
    services = await _admin(request)
    if isinstance(services, Response):
        return services
    return JSONResponse(health_figures(services), headers={"cache-control": "no-store"})


async def crons(request: Request) -> Response:
    services = await _admin(request)
    if isinstance(services, Response):
        return services
    executor = getattr(request.app.state, "crons", None)
    jobs = executor.jobs if executor is not None else []
    now = time.time() * 1000.0
    return JSONResponse(
        {
            "enabled": services.settings.crons_enabled,
            "jobs": [cron_job(job, now) for job in jobs],
        },
        headers={"cache-control": "no-store"},
    )


def _args_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema by wire names; a type pydantic cannot describe accepts anything, and says why."""
    try:
        return model.model_json_schema(by_alias=True)
    except Exception as exc:
        return {"type": "object", "description": f"no schema: {exc}"}


async def functions(request: Request) -> Response:
    services = await _admin(request)
    if isinstance(services, Response):
        return services
    listed = [
        {
            "path": spec.path,
            "kind": spec.kind.value,
            "visibility": spec.visibility.value,
            "argsSchema": _args_schema(spec.args),
        }
        for spec in sorted(services.runner.registry, key=lambda s: s.path)
        if not spec.path.startswith(SYSTEM_PREFIX)
    ]
    return JSONResponse({"functions": listed}, headers={"cache-control": "no-store"})


routes = [
    Route("/api/admin/health", health, methods=["GET"]),
    Route("/api/admin/crons", crons, methods=["GET"]),
    Route("/api/admin/functions", functions, methods=["GET"]),
]
