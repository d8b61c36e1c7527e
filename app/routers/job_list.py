"""GET /jobs: the caller's jobs, newest first, a page at a time, by state and kind.

A script that lost a job's id, or a person on a second device, finds their jobs here. It reads the
owner's index (:mod:`app.job_index`) in chunks, fetches those jobs in one round trip per chunk, and
keeps the ones that match; it examines at most ``MAX_EXAMINED`` index entries per request, so a
filter that matches little answers a short page with a `next` link rather than reading a whole
day's jobs at once.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from app.auth import CallerDep
from app.contract import problem_responses
from app.dependencies import KeysDep, QueueDep
from app.job_index import CURSOR_PATTERN, Position, entries_after, forget, index_key
from app.routers.jobs import owned_by, status_of
from app.schemas import JobKind, JobList, JobState, JobStatus

router = APIRouter(prefix="/jobs", tags=["jobs"])

STATES: tuple[JobState, ...] = ("queued", "started", "finished", "failed", "canceled")
STATE_LIST_PATTERN = f"^({'|'.join(STATES)})(,({'|'.join(STATES)}))*$"
CHUNK = 50
MAX_EXAMINED = 500


def _states(value: str | None) -> frozenset[str] | None:
    """The states asked for (the query's pattern has already refused anything else)."""
    return frozenset(value.split(",")) if value is not None else None


@router.get(
    "",
    response_model=JobList,
    summary="Your jobs, newest first",
    description="Every job the caller's API key queued (with no keys configured: every job of this "
    "server) that has not expired, newest first, `limit` at a time; follow `next` for older ones. "
    "Filter by `state` (comma-separated, e.g. `queued,started` for the unfinished ones) and by `kind`. "
    "Jobs queued before this server listed jobs are not in the list, though `GET /jobs/{id}` still "
    "finds them.",
    responses=problem_responses(422, 503),
)
def list_jobs(
    request: Request,
    queue: QueueDep,
    keys: KeysDep,
    caller: CallerDep,
    state: Annotated[
        str | None,
        Query(
            pattern=STATE_LIST_PATTERN,
            max_length=100,
            description="Only jobs in these states (comma-separated): " + ", ".join(STATES) + ".",
            examples=["queued,started"],
        ),
    ] = None,
    kind: Annotated[JobKind | None, Query(description="Only jobs of this kind.")] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Most jobs in this page.")] = 20,
    cursor: Annotated[
        str | None,
        Query(pattern=CURSOR_PATTERN, description="Where this page starts: from a `next` link."),
    ] = None,
) -> JobList:
    wanted = _states(state)
    position = Position.parse(cursor) if cursor is not None else None
    redis = queue.connection
    key = index_key(keys.prefix, caller)
    StartedJobRegistry(queue=queue).cleanup()  # jobs whose worker died show as failed, as in GET /jobs/{id}
    found: list[JobStatus] = []
    examined = 0
    while len(found) < limit and examined < MAX_EXAMINED:
        entries = entries_after(redis, key, position, min(CHUNK, MAX_EXAMINED - examined))
        if not entries:
            position = None  # the index is exhausted: no next page
            break
        jobs = Job.fetch_many([e.job_id for e in entries], connection=redis, serializer=JSONSerializer)
        forget(redis, key, [e.job_id for e, job in zip(entries, jobs, strict=True) if job is None])
        for entry, job in zip(entries, jobs, strict=True):
            position, examined = entry, examined + 1
            if job is None or job.origin != queue.name or not owned_by(job, caller):
                continue
            status = status_of(request, job, keys)
            if (wanted is None or status.state in wanted) and (kind is None or status.kind == kind):
                found.append(status)
                if len(found) == limit:
                    break
    return JobList(jobs=found, next=_next_link(request, position))


def _next_link(request: Request, position: Position | None) -> str | None:
    if position is None:
        return None
    query = request.url.include_query_params(cursor=position.cursor())
    return f"{query.path}?{query.query}"
