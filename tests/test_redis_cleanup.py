"""Test runs share the machine's Redis: what a run's jobs leave there is removed when it ends."""

from __future__ import annotations

from redis import Redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from core.queue import make_queue
from tests.conftest import _purge, make_settings


def test_purge_removes_the_runs_jobs_results_queue_and_workers(redis_url: str) -> None:
    settings = make_settings(redis_url, name="cleanup-probe")
    redis = Redis.from_url(redis_url)
    queue = make_queue(settings, redis)
    waiting = queue.enqueue("builtins.len", [1])
    run_now = Queue(settings.queue_name, connection=redis, serializer=JSONSerializer, is_async=False)
    done = run_now.enqueue("builtins.len", [1, 2, 3])  # performed here, its result stored as a worker's
    killed = SimpleWorker([queue], connection=redis, serializer=JSONSerializer)
    killed.register_birth()
    redis.delete(killed.key)  # a SIGKILLed worker: its key expires, its name stays in RQ's sets
    assert done.get_status(refresh=True) == "finished" and done.return_value() == 3
    assert redis.exists(f"rq:results:{done.id}") and redis.exists(waiting.key)
    other = Queue("cleanup-probe-other", connection=redis, serializer=JSONSerializer)
    bystander = other.enqueue("builtins.len", [1])  # another project's job on the same Redis
    try:
        _purge(settings)

        assert not redis.exists(done.key, f"rq:results:{done.id}", waiting.key)
        assert settings.queue_name not in {q.name for q in Queue.all(connection=redis)}
        assert not list(redis.scan_iter(match=f"rq:*{settings.queue_name}*"))
        assert not redis.sismember("rq:workers", killed.key)
        assert redis.exists(bystander.key) and "cleanup-probe-other" in {q.name for q in Queue.all(redis)}
    finally:
        other.delete(delete_jobs=True)
