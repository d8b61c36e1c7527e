"""Sends each ended job's webhook, at least once, from whichever API process claims it first.

Every API process runs one :class:`WebhookDispatcher`. Each poll it claims the job ids that are due
in ``<prefix>webhooks:due`` (one Lua call: an id claimed is pushed a lease into the future, so no
other process takes it meanwhile, and a process that dies mid-delivery only delays it by the
lease). For each claimed job:

* gone (deleted, expired) or already settled: forgotten;
* still queued or running: looked at again a poll interval later;
* ended: its final status (the body of ``GET /jobs/{id}``) is POSTed to the URL as a Standard
  Webhooks message, ``{"type": "job.finished" | "job.failed" | "job.canceled", "timestamp", "data"}``
  with ``webhook-id`` (the job's id, the same on every retry, for the receiver to drop repeats),
  ``webhook-timestamp`` and, with ``ATELIER_WEBHOOK_SECRET``, ``webhook-signature``.

A 2xx answer settles it as ``delivered``. Anything else (another status, a timeout, a refused
connection, a host that does not resolve) is retried after ``ATELIER_WEBHOOK_RETRY_DELAYS_S`` in
turn, then settled as ``failed``; a host that now resolves to an address webhooks may not go to is
``failed`` at once. Redirects are not followed, and the answer's body is never read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
from prometheus_client import Counter
from redis import Redis
from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer
from standardwebhooks.webhooks import Webhook
from starlette.concurrency import run_in_threadpool

from app import webhooks
from app.routers.jobs import describe_job, job_state
from app.schemas import TERMINAL_STATES, JobEndedMessage, JobLinks
from app.webhook_targets import (
    IPAddress,
    UnresolvableTarget,
    UnsafeTarget,
    WebhookTarget,
    checked_addresses,
    parse_target,
)
from core.settings import Settings
from core.store import JobKeys

log = logging.getLogger(__name__)

# Due ids (score <= now), at most ARGV[3] of them, each pushed to ARGV[2] (now + lease) as it is taken.
CLAIM_SCRIPT = """
local ids = redis.call('zrangebyscore', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do redis.call('zadd', KEYS[1], ARGV[2], id) end
return ids
"""
CLAIM_BATCH = 50
MAX_CONCURRENT = 8  # deliveries in flight per process: a slow receiver holds one slot, not the loop
LEASE_MARGIN_S = 30
USER_AGENT = "Atelier-Webhooks/0.1"


@dataclass(frozen=True)
class Delivery:
    """One ended job's message, ready to send."""

    job_id: str
    target: WebhookTarget
    body: bytes
    attempts: int  # before this one


@dataclass(frozen=True)
class Outcome:
    """How an attempt went: ``error`` None on a 2xx; ``final`` when retrying cannot help;
    ``unreachable`` when no connection was made (the host's next address may do)."""

    error: str | None = None
    final: bool = False
    unreachable: bool = False


class WebhookDispatcher:
    """One API process's share of webhook delivery (see the module docstring)."""

    def __init__(
        self,
        redis: Redis,
        settings: Settings,
        links_for: Callable[[str], JobLinks],
        attempts: Counter | None = None,
    ) -> None:
        self._attempts = attempts
        self._redis = redis
        self._settings = settings
        self._keys = JobKeys(settings.key_prefix)
        self._links_for = links_for
        secret = settings.webhook_secret
        self._signer = Webhook(secret.get_secret_value()) if secret is not None else None
        self._slots = asyncio.Semaphore(MAX_CONCURRENT)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None

    async def run(self) -> None:
        """Poll until cancelled (the app's shutdown); deliveries in flight are cancelled with it and,
        their lease expired, taken up by another process or this one's next start."""
        timeout = httpx.Timeout(self._settings.webhook_timeout_s)
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            self._client = client
            try:
                while True:
                    await self.poll()
                    await asyncio.sleep(self._settings.webhook_poll_interval_s)
            finally:
                for task in self._in_flight:
                    task.cancel()

    async def poll(self) -> None:
        try:
            due = await run_in_threadpool(self._claim)
        except RedisError as exc:
            log.debug("webhooks: Redis unavailable (%s)", exc)
            return
        for job_id in due:
            task = asyncio.create_task(self._handle(job_id))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    def _claim(self) -> list[str]:
        now = webhooks.now_ms()
        # Long enough for the last of a batch to wait for a slot behind slow receivers and be sent.
        rounds = CLAIM_BATCH // MAX_CONCURRENT + 1
        lease_ms = int((self._settings.webhook_timeout_s * rounds + LEASE_MARGIN_S) * 1000)
        ids = self._redis.eval(CLAIM_SCRIPT, 1, self._keys.webhooks_due, now, now + lease_ms, CLAIM_BATCH)
        return [i.decode() if isinstance(i, bytes) else i for i in ids]

    async def _handle(self, job_id: str) -> None:
        async with self._slots:
            try:
                delivery = await run_in_threadpool(self._prepare, job_id)
                if delivery is None:
                    return
                outcome = await self._send(delivery)
                await run_in_threadpool(self._settle, delivery, outcome)
            except RedisError as exc:  # the lease brings it back once Redis does
                log.warning("webhook of job %s: Redis unavailable (%s); will retry", job_id, exc)
            except Exception:
                log.exception("webhook of job %s: unexpected error; will retry after the lease", job_id)

    def _prepare(self, job_id: str) -> Delivery | None:
        """The message if the job has ended; otherwise reschedule or forget it (blocking: Redis)."""
        due = self._keys.webhooks_due
        raw = self._redis.hgetall(self._keys.webhook(job_id))
        try:
            job = Job.fetch(job_id, connection=self._redis, serializer=JSONSerializer)
        except NoSuchJobError:
            job = None
        if job is None or not raw or raw.get(b"state", b"pending") != b"pending":
            self._redis.zrem(due, job_id)
            return None
        state = job_state(job)
        if state not in TERMINAL_STATES:
            self._redis.zadd(due, {job_id: webhooks.now_ms() + self._poll_ms}, xx=True)
            return None
        status = describe_job(job, self._keys, self._links_for(job_id))
        message = JobEndedMessage(type=f"job.{state}", timestamp=datetime.now(UTC), data=status)
        return Delivery(
            job_id=job_id,
            target=parse_target(raw[b"url"].decode()),
            body=message.model_dump_json(exclude={"data": {"webhook"}}).encode(),
            attempts=int(raw.get(b"attempts", b"0")),
        )

    @property
    def _poll_ms(self) -> int:
        return int(self._settings.webhook_poll_interval_s * 1000)

    async def _send(self, delivery: Delivery) -> Outcome:
        """One POST to an address the URL's host resolves to now, once they are checked again."""
        allow_private = self._settings.webhook_allow_private
        try:
            addresses = await run_in_threadpool(checked_addresses, delivery.target, allow_private)
        except UnresolvableTarget as exc:
            return Outcome(f"the URL {exc}")
        except UnsafeTarget as exc:
            return Outcome(f"the URL {exc}", final=True)
        timeout_s = self._settings.webhook_timeout_s
        outcome = Outcome("no address")
        try:
            async with asyncio.timeout(timeout_s):
                for address in addresses:  # the next only if this one refuses the connection
                    outcome = await self._post(delivery, address)
                    if not outcome.unreachable:
                        break
        except TimeoutError:
            return Outcome(f"timed out after {timeout_s:g} s")
        return outcome

    async def _post(self, delivery: Delivery, address: IPAddress) -> Outcome:
        assert self._client is not None, "run() opens the client"
        url, headers, extensions = delivery.target.pinned(address)
        headers |= self._headers(delivery)
        try:
            async with self._client.stream(
                "POST", url, content=delivery.body, headers=headers, extensions=extensions
            ) as response:
                code = response.status_code
        except httpx.ConnectError as exc:
            return Outcome(f"could not connect to {address}: {exc}", unreachable=True)
        except httpx.TimeoutException:
            return Outcome(f"timed out after {self._settings.webhook_timeout_s:g} s")
        except httpx.HTTPError as exc:
            return Outcome(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        return Outcome() if 200 <= code < 300 else Outcome(f"HTTP {code}")

    def _headers(self, delivery: Delivery) -> dict[str, str]:
        sent_at = datetime.now(UTC)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "webhook-id": delivery.job_id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
        }
        if self._signer is not None:
            headers["webhook-signature"] = self._signer.sign(delivery.job_id, sent_at, delivery.body)
        return headers

    def _settle(self, delivery: Delivery, outcome: Outcome) -> None:
        """Record the attempt; delivered and given-up webhooks leave the due set (blocking: Redis)."""
        attempts = delivery.attempts + 1
        now = datetime.now(UTC)
        delays = self._settings.webhook_retry_delays_s
        fields: dict[str, str | int] = {
            "attempts": attempts,
            "last_attempt_at": now.isoformat(),
            "last_error": outcome.error or "",
            "next_attempt_at": "",
        }
        job_id = delivery.job_id
        retry_at: datetime | None = None
        if outcome.error is None:
            fields["state"] = "delivered"
        elif outcome.final or attempts > len(delays):
            fields["state"] = "failed"
        else:
            retry_at = now + timedelta(seconds=delays[attempts - 1])
            fields["next_attempt_at"] = retry_at.isoformat()
        exists = webhooks.record(self._redis, self._keys, job_id, **fields)
        if exists and retry_at is not None:
            self._redis.zadd(self._keys.webhooks_due, {job_id: int(retry_at.timestamp() * 1000)}, xx=True)
        else:
            self._redis.zrem(self._keys.webhooks_due, job_id)
        if self._attempts is not None:
            self._attempts.labels(fields.get("state", "retry")).inc()
        level = logging.INFO if outcome.error is None else logging.WARNING
        log.log(level, "webhook of job %s, attempt %d: %s", job_id, attempts, outcome.error or "delivered")
