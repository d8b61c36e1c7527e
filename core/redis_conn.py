"""One Redis connection pool per process, with timeouts so a dead Redis fails fast instead of hanging.

A Redis that restarts (seconds) is ridden out: a refused or dropped connection is retried with
backoff for about ``ATELIER_REDIS_RETRY_S`` before the error reaches the caller (the API answers
503 with Retry-After then), so a client polling its job never sees the restart.
"""

from __future__ import annotations

from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

from core.settings import Settings

BACKOFF_BASE_S = 0.1
BACKOFF_CAP_S = 1.0


def retries_within(seconds: float) -> int:
    """How many backoff retries (0.1, 0.2, 0.4, 0.8, 1, 1, ... s) add up to at least ``seconds``."""
    backoff = ExponentialBackoff(cap=BACKOFF_CAP_S, base=BACKOFF_BASE_S)
    retries, waited = 0, 0.0
    while waited < seconds:
        retries += 1
        waited += backoff.compute(retries)
    return retries


def connect(settings: Settings) -> Redis:
    """A client for the queue and results; bytes in, bytes out (RQ and images need raw bytes)."""
    return Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        health_check_interval=30,
        retry_on_timeout=False,
        retry=Retry(
            ExponentialBackoff(cap=BACKOFF_CAP_S, base=BACKOFF_BASE_S),
            retries_within(settings.redis_retry_s),
            supported_errors=(RedisConnectionError,),
        ),
    )
