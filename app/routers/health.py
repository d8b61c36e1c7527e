"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from rq import Worker
from starlette.concurrency import run_in_threadpool

from app.metrics import CONTENT_TYPE

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _redis_and_workers(request: Request) -> dict[str, object]:
    """Ping Redis and count workers of our queue that heartbeated recently."""
    state = request.app.state
    try:
        state.redis.ping()
    except RedisError as exc:
        return {"ok": False, "error": f"Redis at {state.settings.redis_url} is unreachable: {exc}"}
    fresh_after = datetime.now(UTC) - timedelta(seconds=state.settings.worker_monitor_interval_s + 60)
    workers = [
        w
        for w in Worker.all(queue=state.queue)
        if w.last_heartbeat is None or w.last_heartbeat.replace(tzinfo=UTC) >= fresh_after
    ]
    return {
        "ok": True,
        "queue": state.settings.queue_name,
        "queued_jobs": state.queue.count,
        "workers_alive": len(workers),
    }


@router.get("/readyz", summary="Models loaded and Redis reachable (503 otherwise)")
async def readyz(request: Request) -> JSONResponse:
    checks: dict[str, dict[str, object]] = {"redis": await run_in_threadpool(_redis_and_workers, request)}
    for name, check in request.app.state.ready_checks.items():
        checks[name] = check()
    ready = all(bool(c.get("ok")) for c in checks.values())
    if checks["redis"].get("ok") and not checks["redis"].get("workers_alive"):
        checks["redis"]["warning"] = (
            "no worker is alive: optimization jobs wait in the queue until one starts"
        )
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    body = await run_in_threadpool(request.app.state.metrics.render)
    return Response(body, media_type=CONTENT_TYPE)
