"""One Redis connection pool per process, with timeouts so a dead Redis fails fast instead of hanging."""

from __future__ import annotations

from redis import Redis

from app.settings import Settings


def connect(settings: Settings) -> Redis:
    """A client for the queue and results; bytes in, bytes out (RQ and images need raw bytes)."""
    return Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        health_check_interval=30,
        retry_on_timeout=False,
    )
