"""Who may queue another job: a bound on the queue, and a quota of unfinished jobs per API key.

Jobs run for minutes to an hour, so without a bound one client could queue thousands and starve
everyone for days. Before a job is enqueued:

* if ``ATELIER_MAX_QUEUED_JOBS`` jobs already wait in the queue, the new one gets 503 with
  ``Retry-After`` (the whole service is full);
* if the caller's API key already has ``ATELIER_MAX_JOBS_PER_KEY`` unfinished (queued or running)
  jobs, it gets 429 with ``Retry-After`` (this client is over its share).

Both checks and the enqueue itself happen under one short Redis lock, so concurrent submissions,
from any number of API processes, can never overshoot either bound. Each key's job ids are kept in
a Redis set; ids whose job ended or expired are dropped from it whenever it is counted. Every job
also goes into its owner's listing index (:mod:`app.job_index`, for ``GET /jobs``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.exceptions import LockError
from rq import Queue
from rq.job import Job

from app import webhooks
from app.auth import Principal
from app.idempotency import Claim
from app.job_index import add_to_index, index_key
from app.problems import Problem
from app.webhook_targets import WebhookTarget
from core.settings import Settings
from core.store import JobKeys

log = logging.getLogger(__name__)

UNFINISHED = frozenset({"queued", "started", "deferred", "scheduled", "created"})
LOCK_TIMEOUT_S = 10  # longer than any enqueue; a crashed holder frees the lock after this
LOCK_WAIT_S = 5
FULL_QUEUE_RETRY_AFTER_S = 30
QUOTA_RETRY_AFTER_S = 30


def owner_jobs_key(prefix: str, owner: Principal) -> str:
    return f"{prefix}owner:{owner.digest}:jobs"


def unfinished_jobs(redis: Redis, key: str) -> int:
    """How many of the jobs listed under ``key`` are still queued or running (ended ones are dropped)."""
    ids = [i.decode() if isinstance(i, bytes) else i for i in redis.smembers(key)]
    if not ids:
        return 0
    with redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(Job.key_for(job_id), "status")
        statuses = pipe.execute()
    ended = [i for i, s in zip(ids, statuses, strict=True) if s is None or s.decode() not in UNFINISHED]
    if ended:
        redis.srem(key, *ended)
    return len(ids) - len(ended)


def admit_and_enqueue(
    redis: Redis,
    queue: Queue,
    settings: Settings,
    owner: Principal | None,
    enqueue: Callable[[], Job],
    idempotency: Claim | None = None,
    webhook: WebhookTarget | None = None,
) -> Job:
    """Enqueue with ``enqueue()`` if the queue and the owner's quota allow it (blocking: run in a thread).

    The request's Idempotency-Key claim, if any, is bound to the new job here, and its webhook
    registered, so every route that queues a job gets both without a step of its own.
    """
    lock = redis.lock(
        f"{settings.key_prefix}lock:job-admission", timeout=LOCK_TIMEOUT_S, blocking_timeout=LOCK_WAIT_S
    )
    if not lock.acquire():
        raise Problem(
            503,
            "overloaded",
            "Too many job submissions at once; retry shortly.",
            headers={"Retry-After": "1"},
        )
    try:
        waiting = queue.count
        if waiting >= settings.max_queued_jobs:
            raise Problem(
                503,
                "queue-full",
                f"{waiting} jobs are already waiting (the limit is {settings.max_queued_jobs}); retry later.",
                headers={"Retry-After": str(FULL_QUEUE_RETRY_AFTER_S)},
                queued_jobs=waiting,
            )
        key = owner_jobs_key(settings.key_prefix, owner) if owner is not None else None
        if key is not None and settings.max_jobs_per_key:
            mine = unfinished_jobs(redis, key)
            if mine >= settings.max_jobs_per_key:
                raise Problem(
                    429,
                    "too-many-jobs",
                    f"This API key has {mine} unfinished jobs, the most it may have; wait for one "
                    "to end (or cancel one) and retry.",
                    headers={"Retry-After": str(QUOTA_RETRY_AFTER_S)},
                    unfinished_jobs=mine,
                )
        job = enqueue()
        # With the request's id on the line (app/request_id.py): a report's id leads to the job's id,
        # which the worker's lines carry.
        log.info("queued job %s (%s)", job.id, job.description)
        if idempotency is not None:
            idempotency.bind(job.id)
        lifetime = settings.result_ttl_s + settings.job_timeout_s
        queued_at = job.created_at or datetime.now(UTC)
        with redis.pipeline() as pipe:
            if key is not None:
                pipe.sadd(key, job.id)
                pipe.expire(key, lifetime)
            add_to_index(pipe, index_key(settings.key_prefix, owner), job.id, queued_at, lifetime)
            if webhook is not None:
                webhooks.register(pipe, JobKeys(settings.key_prefix), job.id, webhook, lifetime)
            pipe.execute()
        return job
    finally:
        with contextlib.suppress(LockError):
            lock.release()


def enqueue_job(
    queue: Queue,
    settings: Settings,
    func: str,
    job_id: str,
    *,
    kwargs: dict[str, Any],
    meta: dict[str, Any],
    owner: str | None,
    description: str,
) -> Job:
    """Queue ``func`` as ``job_id`` with this server's time limit and lifetimes; ``owner`` is the digest
    of the API key it belongs to (None without keys). Called inside :func:`admit_and_enqueue`."""
    return queue.enqueue(
        func,
        kwargs=kwargs,
        job_id=job_id,
        job_timeout=settings.job_timeout_s,
        result_ttl=settings.result_ttl_s,
        failure_ttl=settings.result_ttl_s,
        ttl=settings.result_ttl_s,
        meta={**meta, "owner": owner},
        description=description,
    )
