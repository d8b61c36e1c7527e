"""The worker process: preload VGG19, then serve the queue with RQ's forking worker.

Run it with ``atelier worker`` (or ``python -m worker``); several may share a queue, on one machine
or many.
"""

from __future__ import annotations

import logging
import os

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Worker
from rq.job import Job
from rq.serializers import JSONSerializer

from app.redis_conn import connect
from app.settings import Settings, get_settings
from worker import runtime

log = logging.getLogger(__name__)


class AtelierWorker(Worker):
    """RQ's forking worker with a heartbeat window we control.

    RQ keeps a started job alive in its registry for ``monitor interval + 60 s`` after each heartbeat;
    a worker that is SIGKILLed or OOM-killed stops heartbeating, so the job is declared abandoned (and
    failed) once that window passes. We shorten the fixed 60 s to ``heartbeat_grace_s`` so clients
    learn about a dead worker within a bounded, configurable time.
    """

    heartbeat_grace_s: int = 10

    def _set_ip_address(self, connection: Redis) -> None:
        """The address is only informative: a server whose CLIENT INFO reply redis-py cannot parse
        (the embedded fallback of ``atelier up``) must not stop the worker from starting."""
        try:
            super()._set_ip_address(connection)
        except (RedisError, ValueError):
            self.ip_address = "unknown"

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        interval = self.job_monitoring_interval
        if job.timeout and job.timeout > 0:
            interval = min(job.timeout - working_time, interval)
        return int(max(interval, 1)) + self.heartbeat_grace_s


def make_queue(settings: Settings, connection=None) -> Queue:
    return Queue(settings.queue_name, connection=connection or connect(settings), serializer=JSONSerializer)


def run_worker(settings: Settings | None = None, *, burst: bool = False, name: str | None = None) -> bool:
    """Start one worker in this process; returns when it stops (Ctrl-C, SIGTERM, or burst done)."""
    settings = settings or get_settings()
    runtime.prepare_for_fork(settings.torch_threads)
    runtime.preload()
    redis = connect(settings)
    worker = AtelierWorker(
        [make_queue(settings, redis)],
        connection=redis,
        serializer=JSONSerializer,
        name=name,
        job_monitoring_interval=settings.worker_monitor_interval_s,
        default_result_ttl=settings.result_ttl_s,
    )
    worker.heartbeat_grace_s = settings.heartbeat_grace_s
    log.info("worker %s (pid %s) serving queue %r", worker.name, os.getpid(), settings.queue_name)
    return worker.work(burst=burst, logging_level="INFO", with_scheduler=False)


if __name__ == "__main__":
    run_worker()
