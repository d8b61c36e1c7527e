"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool

from app.fleet import fleet_status
from app.metrics import CONTENT_TYPE

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _redis_and_workers(request: Request) -> dict[str, dict[str, object]]:
    """Ping Redis; count the workers of our queue whose heartbeat is fresh (registration is not enough)."""
    state = request.app.state
    settings = state.settings
    try:
        state.redis.ping()
        fleet = fleet_status(state.redis, settings)
        queued = state.queue.count
    except RedisError as exc:
        error = f"Redis at {settings.redis_url} is unreachable: {exc}"
        return {"redis": {"ok": False, "error": error}, "workers": {"ok": False, "error": error}}
    workers: dict[str, object] = {
        "ok": bool(fleet.alive),
        "queue": settings.queue_name,
        "alive": len(fleet.alive),
        "restarts": fleet.worker_restarts,
        "crash_looping": fleet.crash_looping,
        "supervisors": [asdict(r) for r in fleet.reports],
    }
    if not fleet.alive:
        workers["error"] = (
            f"no worker with a fresh heartbeat serves queue {settings.queue_name!r}: "
            "optimization jobs wait until one starts"
        )
    elif fleet.crash_looping:
        workers["warning"] = f"{fleet.crash_looping} worker(s) keep dying soon after each restart"
    return {"redis": {"ok": True, "queue": settings.queue_name, "queued_jobs": queued}, "workers": workers}


READINESS_SCHEMA = {
    "type": "object",
    "required": ["ready", "checks"],
    "properties": {
        "ready": {"type": "boolean"},
        "checks": {
            "type": "object",
            "description": "One entry per dependency (redis, workers, each model), each with `ok`.",
            "additionalProperties": {
                "type": "object",
                "required": ["ok"],
                "properties": {"ok": {"type": "boolean"}},
            },
        },
    },
}


@router.get(
    "/readyz",
    summary="Models loaded, Redis reachable, a live worker on the queue (503 otherwise)",
    response_class=JSONResponse,
    responses={
        200: {"description": "Ready.", "content": {"application/json": {"schema": READINESS_SCHEMA}}},
        503: {
            "description": "Not ready: the failing check says why (no Retry-After: probes poll anyway).",
            "content": {"application/json": {"schema": READINESS_SCHEMA}},
        },
    },
)
async def readyz(request: Request) -> JSONResponse:
    checks: dict[str, dict[str, object]] = await run_in_threadpool(_redis_and_workers, request)
    for name, check in request.app.state.ready_checks.items():
        checks[name] = check()
    ready = all(bool(c.get("ok")) for c in checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text format.",
            "content": {CONTENT_TYPE: {"schema": {"type": "string"}}},
        }
    },
)
async def metrics(request: Request) -> Response:
    body = await run_in_threadpool(request.app.state.metrics.render)
    return Response(body, media_type=CONTENT_TYPE)
