"""Each owner's jobs in the order they were queued, so ``GET /jobs`` can list them newest first.

A sorted set per owner (``<prefix>jobs:index:<key digest>``, or ``...:open`` for a server without API
keys): member the job id, score the time it was queued in ms. :func:`app.job_admission.admit_and_enqueue`
adds every job it queues, in one transaction with the quota set; the set expires a result's
lifetime after its newest job was added. Jobs that expired are dropped from it as a listing meets
them, so it never needs a sweep of its own.

A page is read in chunks from a cursor ``<score>-<job id>`` (the last entry examined), so jobs queued
while a client pages never shift the pages it has yet to read, and equal scores are ordered by id.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from redis import Redis
from redis.client import Pipeline

from app.auth import Principal

CURSOR_PATTERN = r"^[0-9]{1,15}-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


def index_key(prefix: str, owner: Principal | None) -> str:
    return f"{prefix}jobs:index:{owner.digest if owner is not None else 'open'}"


def add_to_index(pipe: Pipeline, key: str, job_id: str, queued_at: datetime, ttl_s: int) -> None:
    pipe.zadd(key, {job_id: int(queued_at.timestamp() * 1000)})
    pipe.expire(key, ttl_s)


@dataclass(frozen=True)
class Position:
    """An entry of the index: where a page ends and the next one starts (exclusive)."""

    score: int
    job_id: str

    def cursor(self) -> str:
        return f"{self.score}-{self.job_id}"

    @classmethod
    def parse(cls, cursor: str) -> Position:
        """A cursor that matched ``CURSOR_PATTERN`` (the route's query declares it, so FastAPI refuses
        anything else with a 422 naming ``cursor``)."""
        score, _, job_id = cursor.partition("-")
        return cls(int(score), job_id)


def entries_after(redis: Redis, key: str, after: Position | None, count: int) -> list[Position]:
    """Up to ``count`` entries older than ``after`` (the newest first when ``after`` is None)."""
    top = "+inf" if after is None else after.score
    # Entries with the cursor's own score come first; those at or before the cursor's id are skipped.
    ties = 0 if after is None else redis.zcount(key, after.score, after.score)
    rows = redis.zrevrangebyscore(key, top, "-inf", start=0, num=count + ties, withscores=True)
    found: list[Position] = []
    for member, score in rows:
        position = Position(int(score), member.decode() if isinstance(member, bytes) else member)
        if after is not None and position.score == after.score and position.job_id >= after.job_id:
            continue
        found.append(position)
        if len(found) == count:
            break
    return found


def forget(redis: Redis, key: str, job_ids: list[str]) -> None:
    """Drop expired jobs from the index."""
    if job_ids:
        redis.zrem(key, *job_ids)
