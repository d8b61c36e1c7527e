"""``atelier up`` finds or starts a Redis: the configured one, a redis-server, or the embedded one."""

from __future__ import annotations

import shutil
import subprocess
import sys
from unittest import mock

from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from app import redis_launcher
from tests.test_jobs_api import _free_port

WORKER_SNIPPET = (
    "import sys; from redis import Redis; from rq import Queue; from rq.serializers import JSONSerializer;"
    "from worker.main import AtelierWorker; r = Redis(port=int(sys.argv[1]));"
    "AtelierWorker([Queue('launch', connection=r, serializer=JSONSerializer)], connection=r,"
    " serializer=JSONSerializer).work(burst=True)"
)


def test_reachable_redis_is_used_as_is(redis_url):
    stop = redis_launcher.ensure_redis(redis_url)
    stop()  # a no-op: we did not start it
    assert Redis.from_url(redis_url).ping()


def test_redis_server_is_started_when_none_answers():
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    assert not redis_launcher.reachable(url)
    stop = redis_launcher.ensure_redis(url)
    try:
        assert Redis(port=port).ping()
    finally:
        stop()
    assert not redis_launcher.reachable(url)


def test_embedded_redis_runs_real_jobs_when_nothing_is_installed():
    port = _free_port()
    with mock.patch.object(shutil, "which", return_value=None):
        stop = redis_launcher.ensure_redis(f"redis://127.0.0.1:{port}/0")
    try:
        queue = Queue("launch", connection=Redis(port=port), serializer=JSONSerializer)
        job = queue.enqueue("os.getpid")
        subprocess.run(
            [sys.executable, "-c", WORKER_SNIPPET, str(port)], check=True, timeout=120, capture_output=True
        )
        job.refresh()
        assert job.get_status() == "finished" and isinstance(job.return_value(), int)
    finally:
        stop()
