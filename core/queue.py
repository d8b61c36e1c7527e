"""The RQ queue the API enqueues on and the workers serve (JSON-serialized jobs)."""

from __future__ import annotations

from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from core.redis_conn import connect
from core.settings import Settings


def make_queue(settings: Settings, connection: Redis | None = None) -> Queue:
    return Queue(settings.queue_name, connection=connection or connect(settings), serializer=JSONSerializer)
