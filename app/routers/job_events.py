"""GET /jobs/{id}/events: a job's progress and state changes pushed as server-sent events.

Each stream is an async generator on the event loop: it reads the job from Redis every
``job_events_interval_s`` with one short call in the thread pool and sleeps in between, so a
thousand watchers cost a thousand sleeping coroutines, not a thousand threads. The stream ends by
itself once the job is finished, failed or canceled.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool

from app.auth import StreamCallerDep
from app.contract import problem_responses
from app.dependencies import KeysDep, QueueDep, SettingsDep
from app.problems import Problem
from app.routers.jobs import current_status
from app.schemas import TERMINAL_STATES, JobStatus

router = APIRouter(prefix="/jobs", tags=["jobs"])

KEEPALIVE_S = 15.0  # a comment line now and then keeps proxies from closing an idle stream
RETRY_MS = 2000

EVENTS_DESCRIPTION = f"""
Server-sent events (`text/event-stream`) for one job, so a page can show live progress without
polling. Every event's `data` is the same JSON as `GET /jobs/{{id}}`:

* `state`: sent first, then whenever the state changes (`queued`, `started`, `finished`, `failed`,
  `canceled`);
* `progress`: whenever the step, the loss terms or the preview (`progress.preview_step`, the image
  at `links.preview`) change while the state stays the same (and when a cancellation has been
  requested, until the job stops at its next step);
* `error`: a problem detail (the job expired, Redis is unavailable); the stream then ends.

With API keys on, send `Authorization: Bearer <key>`; a browser's `EventSource`, which cannot set
headers, may pass the key as `?key=<key>` instead.

The stream closes after the `state` event of a terminal state. Lines starting with `:` are
keep-alives (every {KEEPALIVE_S:.0f} s). An unknown job is a 404 problem before any event is sent.
With `curl -N localhost:8000/jobs/<id>/events` you see it live.
"""

EXAMPLE = (
    'event: state\ndata: {"id": "3f0c6f2e-...", "state": "started", "progress": {"step": 0, ...}}\n\n'
    'event: progress\ndata: {"id": "3f0c6f2e-...", "state": "started", "progress": {"step": 40, ...}}\n\n'
)


class EventStreamResponse(StreamingResponse):
    media_type = "text/event-stream"


def format_event(event: str, data: str) -> str:
    """One SSE message (``data`` is single-line JSON, so one ``data:`` line suffices)."""
    return f"event: {event}\ndata: {data}\n\n"


def _progress_key(status: JobStatus) -> tuple[object, ...]:
    """What a `progress` event reports: the step, the losses, a new preview, and a cancellation on its way."""
    progress = status.progress
    losses = tuple(sorted(progress.losses.items()))
    return (progress.step, progress.total_steps, losses, progress.preview_step, status.cancel_requested)


def _problem_json(problem: Problem, request: Request) -> str:
    return json.dumps(problem.body(request.url.path))


async def job_events(
    request: Request, read_status: Callable[[], JobStatus], interval_s: float, first: JobStatus
) -> AsyncIterator[str]:
    """Yield SSE messages until the job ends, the client leaves, or the job can no longer be read."""
    yield f"retry: {RETRY_MS}\n\n"
    status = first
    sent_state: str | None = None
    sent_progress: tuple[object, ...] | None = None
    last_write = time.monotonic()
    while True:
        progress = _progress_key(status)
        event = "state" if status.state != sent_state else "progress" if progress != sent_progress else None
        if event is not None:
            yield format_event(event, status.model_dump_json())
            sent_state, sent_progress, last_write = status.state, progress, time.monotonic()
        elif time.monotonic() - last_write >= KEEPALIVE_S:
            yield ": keep-alive\n\n"
            last_write = time.monotonic()
        if status.state in TERMINAL_STATES:
            return
        await asyncio.sleep(interval_s)
        if await request.is_disconnected():
            return
        try:
            status = await run_in_threadpool(read_status)
        except Problem as problem:
            yield format_event("error", _problem_json(problem, request))
            return
        except RedisError as exc:
            problem = Problem(503, "service-unavailable", f"The job store (Redis) is unavailable: {exc}.")
            yield format_event("error", _problem_json(problem, request))
            return


@router.get(
    "/{job_id:uuid}/events",
    response_class=EventStreamResponse,
    summary="Live progress and state changes of a job (server-sent events)",
    description=EVENTS_DESCRIPTION,
    responses={
        200: {
            "description": "An event stream that ends when the job does.",
            "content": {"text/event-stream": {"schema": {"type": "string"}, "example": EXAMPLE}},
        },
        **problem_responses(404, 503, d404="Unknown or expired job, or another API key's."),
    },
)
async def stream_job_events(
    request: Request,
    job_id: uuid.UUID,
    queue: QueueDep,
    keys: KeysDep,
    settings: SettingsDep,
    caller: StreamCallerDep,
) -> EventStreamResponse:
    def read_status() -> JobStatus:
        return current_status(request, queue, keys, job_id, caller)

    first = await run_in_threadpool(read_status)  # an unknown job is a 404 problem, not an empty stream
    return EventStreamResponse(
        job_events(request, read_status, settings.job_events_interval_s, first),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
