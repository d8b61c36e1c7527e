"""A job's webhook: the URL its submitter gave (``webhook_url``), and how its delivery is going.

Scripts that queue a job for minutes would otherwise poll it or hold an event stream open. With a
``webhook_url``, the server POSTs the job's final status there once it ends (finished, failed or
canceled): see :mod:`app.webhook_dispatcher` for the delivery. This module is the bookkeeping both
sides share, in Redis:

* ``<prefix>job:<id>:webhook``, a hash: the URL and the delivery's state, attempts, last error. It
  expires with the job's other keys and is deleted with them.
* ``<prefix>webhooks:due``, a sorted set of job ids scored by when an API process should look at the
  job next (ms): a job still running is looked at again a poll interval later, a failed delivery
  after its retry delay.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import Form
from redis import Redis
from redis.client import Pipeline
from starlette.concurrency import run_in_threadpool

from app.problems import Problem
from app.schemas import WebhookDelivery
from app.webhook_targets import MAX_URL_LENGTH, UnsafeTarget, WebhookTarget, checked_addresses, parse_target
from core.settings import Settings
from core.store import JobKeys

FIELD = "webhook_url"
FIELD_DESCRIPTION = (
    "An http(s) URL to POST the job's final status to once it ends (finished, failed or canceled), "
    "as a Standard Webhooks message (`webhook-id`, `webhook-timestamp`, `webhook-signature` when the "
    "server has a secret). Retried with backoff until it answers 2xx. Public addresses only, unless "
    "the server allows others."
)
WebhookUrlForm = Annotated[
    str | None,
    Form(
        max_length=MAX_URL_LENGTH,
        description=FIELD_DESCRIPTION,
        examples=["https://example.com/hooks/atelier"],
    ),
]
# Writes the delivery's fields only if the job still has its hash: a job deleted meanwhile stays deleted.
UPDATE_SCRIPT = (
    "if redis.call('exists', KEYS[1]) == 1 then redis.call('hset', KEYS[1], unpack(ARGV)) return 1 end "
    "return 0"
)


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


async def accepted_target(settings: Settings, raw: str | None) -> WebhookTarget | None:
    """The submitted ``webhook_url`` once the server may call it, or a 422 problem naming the field."""
    if raw is None:
        return None
    if not settings.webhooks_enabled:
        raise Problem(422, "validation-error", f"'{FIELD}': this server does not send webhooks.", field=FIELD)
    try:
        target = parse_target(raw)
        await run_in_threadpool(checked_addresses, target, settings.webhook_allow_private)
    except UnsafeTarget as exc:
        raise Problem(422, "validation-error", f"'{FIELD}' {exc}.", field=FIELD) from None
    return target


def register(pipe: Pipeline, keys: JobKeys, job_id: str, target: WebhookTarget, ttl_s: int) -> None:
    """Remember the job's webhook (in the caller's transaction) and have it looked at right away."""
    pipe.hset(keys.webhook(job_id), mapping={"url": str(target.url), "state": "pending", "attempts": 0})
    pipe.expire(keys.webhook(job_id), ttl_s)
    pipe.zadd(keys.webhooks_due, {job_id: now_ms()})


def record(redis: Redis, keys: JobKeys, job_id: str, **fields: str | int) -> bool:
    """Update the delivery's fields; False (and nothing written) if the job's webhook is gone."""
    flat = [item for pair in fields.items() for item in pair]
    return bool(redis.eval(UPDATE_SCRIPT, 1, keys.webhook(job_id), *flat))


def delivery_of(raw: dict[bytes, bytes]) -> WebhookDelivery | None:
    """The public view of a webhook hash (None for a job submitted without one)."""
    if not raw:
        return None
    fields = {k.decode(): v.decode() for k, v in raw.items()}
    return WebhookDelivery(
        state=fields.get("state", "pending"),
        attempts=int(fields.get("attempts", 0)),
        last_attempt_at=fields.get("last_attempt_at") or None,
        next_attempt_at=fields.get("next_attempt_at") or None,
        last_error=fields.get("last_error") or None,
    )
