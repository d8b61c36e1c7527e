"""``Idempotency-Key`` on job submissions: a retried POST gets the job it already made, not a second one.

A script whose POST timed out or lost its connection cannot know whether the job was queued; retrying
blindly queues another job that runs for minutes. With ``Idempotency-Key: <1-255 visible ASCII
characters>`` (IETF draft-ietf-httpapi-idempotency-key-header) on ``POST /jobs/optimize``,
``/jobs/stylize-image``, ``/jobs/stylize-video`` or ``/styles``:

* the first request claims the key (per caller and route) and, once its job is queued, binds it to it;
* a repeat with the same fields and files answers 202 with that job's current status and
  ``Idempotent-Replayed: true``; nothing new is queued;
* a repeat with other fields or files is a 422 problem naming ``Idempotency-Key``;
* a repeat while the first is still being handled is a 409 problem with ``Retry-After``;
* a first request that fails (any 4xx or 5xx) releases the key, so a corrected one may use it.

Bindings live ``ATELIER_IDEMPOTENCY_TTL_S``. Requests are compared by their form fields in order, files
by the sha256 of their bytes (the multipart boundary and file names differ between retries).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request
from redis import Redis
from rq.job import Job
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from app.auth import CallerDep
from app.dependencies import RedisDep, SettingsDep
from app.problems import Problem

HEADER = "Idempotency-Key"
CLAIM_TTL_S = 300  # a claim outlives any upload's handling; a crashed process frees its key after this
IN_FLIGHT_RETRY_AFTER_S = "2"
READ_CHUNK = 1024 * 1024
# Replaces a binding whose job is gone with this request's claim, if nobody changed it meanwhile.
TAKE_OVER_SCRIPT = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('set', KEYS[1], ARGV[2], 'EX', ARGV[3]) end return false"
)
# Frees a claim only if it is still this request's own (not a binding, not another request's claim).
RELEASE_SCRIPT = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)


@dataclass
class Claim:
    """This request's hold on an idempotency key; ``job_id`` is set when it replays an earlier request."""

    redis: Redis
    key: str
    fingerprint: str
    token: str
    ttl_s: int
    job_id: str | None = None

    @property
    def pending_value(self) -> str:
        return json.dumps({"fingerprint": self.fingerprint, "token": self.token})

    def bind(self, job_id: str) -> None:
        """The job is queued: repeats of this request now get it (blocking: run in a thread)."""
        bound = json.dumps({"fingerprint": self.fingerprint, "job_id": job_id})
        self.redis.set(self.key, bound, ex=self.ttl_s)

    def release(self) -> None:
        self.redis.eval(RELEASE_SCRIPT, 1, self.key, self.pending_value)


def request_fingerprint(path: str, fields: list[tuple[str, str | UploadFile]]) -> str:
    """sha256 of the route and the form's fields in order, files by content (blocking: run in a thread)."""
    digest = hashlib.sha256(path.encode())
    for name, value in fields:
        digest.update(b"\0" + name.encode() + b"\0")
        if isinstance(value, UploadFile):
            content = hashlib.sha256()
            value.file.seek(0)
            while chunk := value.file.read(READ_CHUNK):
                content.update(chunk)
            value.file.seek(0)
            digest.update(b"file:" + content.digest())
        else:
            digest.update(b"text:" + value.encode())
    return digest.hexdigest()


def _in_progress() -> Problem:
    return Problem(
        409,
        "request-in-progress",
        f"A request with this {HEADER} is still being handled; retry shortly to get its job.",
        field=HEADER,
        headers={"Retry-After": IN_FLIGHT_RETRY_AFTER_S},
    )


def _claim(redis: Redis, key: str, fingerprint: str, ttl_s: int) -> Claim:
    """Claim ``key`` for this request, or find what an earlier request with the same key left."""
    claim = Claim(redis, key, fingerprint, secrets.token_hex(8), ttl_s)
    if redis.set(key, claim.pending_value, nx=True, ex=CLAIM_TTL_S):
        return claim
    raw = redis.get(key)
    if raw is None:  # the other request released it between our two calls: try once more
        if redis.set(key, claim.pending_value, nx=True, ex=CLAIM_TTL_S):
            return claim
        raw = redis.get(key) or b"{}"
    earlier = json.loads(raw)
    if earlier.get("fingerprint") != fingerprint:
        raise Problem(
            422,
            "idempotency-key-reused",
            f"This {HEADER} was already used for a different request (other fields or files); "
            "use a new key for a new request.",
            field=HEADER,
        )
    if earlier.get("job_id") is None:
        raise _in_progress()
    if not redis.exists(Job.key_for(earlier["job_id"])):
        # Its job was deleted (DELETE /jobs/{id}) or expired: nothing to replay, so the key is free,
        # unless another request took it over in the meantime.
        if redis.eval(TAKE_OVER_SCRIPT, 1, key, raw, claim.pending_value, CLAIM_TTL_S):
            return claim
        raise _in_progress()
    claim.job_id = earlier["job_id"]
    return claim


async def claim_idempotency_key(
    request: Request,
    settings: SettingsDep,
    redis: RedisDep,
    caller: CallerDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias=HEADER,
            min_length=1,
            max_length=255,
            pattern=r"^[\x21-\x7e]+$",
            description="Makes the submission safe to retry: a repeat with the same key and the same "
            "fields and files gets the job the first one queued (`Idempotent-Replayed: true`), not a "
            "new one. 1-255 visible ASCII characters, e.g. a UUID.",
        ),
    ] = None,
) -> AsyncIterator[Claim | None]:
    """The request's claim on its key (None without the header); released if the request fails."""
    if idempotency_key is None:
        yield None
        return
    owner = caller.digest if caller is not None else "anonymous"
    scope = hashlib.sha256(f"{owner}\0{request.url.path}\0{idempotency_key}".encode()).hexdigest()
    key = f"{settings.key_prefix}idempotency:{scope}"
    fields = (await request.form()).multi_items()  # parsed once already, for the route's own fields
    fingerprint = await run_in_threadpool(request_fingerprint, request.url.path, fields)
    claim = await run_in_threadpool(_claim, redis, key, fingerprint, settings.idempotency_ttl_s)
    if claim.job_id is not None:  # a replay claims nothing, so there is nothing to release
        yield claim
        return
    try:
        yield claim
    except BaseException:
        await run_in_threadpool(claim.release)
        raise


IdempotencyDep = Annotated[Claim | None, Depends(claim_idempotency_key)]
