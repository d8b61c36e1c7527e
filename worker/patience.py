"""Riding out a short Redis outage (a restart takes seconds) instead of failing the job it hit.

A running job talks to Redis at every step (cancel flag, progress) and at its end (the result);
the worker heartbeats it. Without patience, a Redis restart in the middle of an hour-long job
kills the worker and fails the job. Calls wrapped here retry connection errors for up to
``REDIS_OUTAGE_TOLERANCE_S``; a longer outage still fails the job, as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

T = TypeVar("T")
REDIS_OUTAGE_TOLERANCE_S = 30.0
RETRY_EVERY_S = 0.5
TRANSIENT = (RedisConnectionError, RedisTimeoutError)


def patiently(call: Callable[[], T], what: str, tolerance_s: float = REDIS_OUTAGE_TOLERANCE_S) -> T:
    """``call()``, retried while Redis is unreachable, for at most ``tolerance_s``."""
    deadline = time.monotonic() + tolerance_s
    warned = False
    while True:
        try:
            return call()
        except TRANSIENT as exc:
            if time.monotonic() >= deadline:
                raise
            if not warned:
                log.warning("%s: Redis unavailable (%s); retrying for up to %.0f s", what, exc, tolerance_s)
                warned = True
            time.sleep(RETRY_EVERY_S)
