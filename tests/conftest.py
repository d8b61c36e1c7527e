"""Shared fixtures: a real Redis, per-run queue/key isolation, real worker processes, test images."""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Worker
from rq.exceptions import DeserializationError, NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.worker_registration import clean_worker_registry

from app.main import create_app
from core.queue import make_queue
from core.settings import Settings

REDIS_URL = os.environ.get("ATELIER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("ATELIER_DATA_DIR", PROJECT_ROOT.parent / "shared" / "data"))
RUN_ID = uuid.uuid4().hex[:10]


def _ping(url: str) -> bool:
    try:
        return bool(Redis.from_url(url, socket_connect_timeout=1).ping())
    except RedisError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The machine's real Redis; started here if it is down and redis-server is installed.

    At the end of the session every key of this run is deleted, under whichever of the run's names
    (``make_settings(name=...)``) a test used, so runs leave nothing behind in the shared Redis.
    """
    if not _ping(REDIS_URL):
        server = shutil.which("redis-server")
        if server is None:
            pytest.fail("Redis is not reachable at 127.0.0.1:6379 and redis-server is not installed")
        subprocess.run([server, "--daemonize", "yes", "--port", "6379", "--save", ""], check=True)
        for _ in range(50):
            if _ping(REDIS_URL):
                break
            time.sleep(0.1)
    yield REDIS_URL
    _purge_rq(REDIS_URL, f"atelier-test-{RUN_ID}-*")
    _purge_patterns(REDIS_URL, f"atelier-test-{RUN_ID}-*", f"rq:*atelier-test-{RUN_ID}-*")


def make_settings(redis_url: str, name: str = "main", **overrides) -> Settings:
    """Settings isolated to this test run: own queue name and key prefix, short heartbeats."""
    base = {
        "redis_url": redis_url,
        "queue_name": f"atelier-test-{RUN_ID}-{name}",
        "key_prefix": f"atelier-test-{RUN_ID}-{name}:",
        "worker_monitor_interval_s": 1,
        "heartbeat_grace_s": 2,
        "reaper_interval_s": 1.0,
        "redis_timeout_s": 1.0,
        "redis_retry_s": 0.5,  # tests of a dead Redis need not wait for it
        "gatys_default_size": 64,
    }
    base.update(overrides)
    return Settings(**base)


def _purge_patterns(redis_url: str, *patterns: str) -> None:
    redis = Redis.from_url(redis_url)
    for pattern in patterns:
        for key in redis.scan_iter(match=pattern, count=500):
            redis.delete(key)


def _purge_rq(redis_url: str, queue_glob: str) -> None:
    """What RQ keeps of the queues matching ``queue_glob`` under names that do not carry them.

    Job hashes and results are keyed by job id (``rq:job:<id>``, ``rq:results:<id>``), and a queue's
    name stays in RQ's set of queues (``rq:queues``) after its own keys are gone: left alone, every
    test run would leave its jobs behind for a day and its queue names in that set for good.
    """
    redis = Redis.from_url(redis_url)
    for key in redis.scan_iter(match="rq:job:*", count=500):
        job_id = key.decode().removeprefix("rq:job:")
        if ":" in job_id:  # a job's dependents or dependencies set, deleted with the job
            continue
        origin = redis.hget(key, "origin")
        if origin is None or not fnmatch.fnmatchcase(origin.decode(), queue_glob):
            continue
        try:
            Job.fetch(job_id, connection=redis, serializer=JSONSerializer).delete()
        except (NoSuchJobError, DeserializationError, ValueError):  # gone meanwhile, half-written, or
            # (ValueError) an execution its registry still lists has expired: RQ's delete gives up
            redis.delete(key, f"rq:results:{job_id}", f"rq:executions:{job_id}")
    for queue in Queue.all(connection=redis):
        if fnmatch.fnmatchcase(queue.name, queue_glob):
            clean_worker_registry(queue)  # workers that have exited, from RQ's worker sets
            queue.delete(delete_jobs=True)


def _purge(settings: Settings) -> None:
    _purge_rq(settings.redis_url, settings.queue_name)
    _purge_patterns(settings.redis_url, f"{settings.key_prefix}*", f"rq:*{settings.queue_name}*")


@pytest.fixture(scope="session")
def settings(redis_url: str) -> Iterator[Settings]:
    s = make_settings(redis_url)
    yield s
    _purge(s)


@pytest.fixture(scope="session")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny tensors: one thread avoids OpenMP barrier stalls when other jobs share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class WorkerProcess:
    """A real ``atelier worker`` in its own process group (so a test can SIGKILL it and its horse)."""

    def __init__(self, settings: Settings, extra_env: dict[str, str] | None = None) -> None:
        env = os.environ.copy()
        env.update(
            {
                "ATELIER_REDIS_URL": settings.redis_url,
                "ATELIER_QUEUE_NAME": settings.queue_name,
                "ATELIER_KEY_PREFIX": settings.key_prefix,
                "ATELIER_WORKER_MONITOR_INTERVAL_S": str(settings.worker_monitor_interval_s),
                "ATELIER_HEARTBEAT_GRACE_S": str(settings.heartbeat_grace_s),
                "ATELIER_TORCH_THREADS": "2",
                **(extra_env or {}),
            }
        )
        self.settings = settings
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker"],
            env=env,
            cwd=PROJECT_ROOT,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        queue = make_queue(settings)
        deadline = time.monotonic() + 60
        while not any(w.pid == self.proc.pid for w in Worker.all(queue=queue)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("worker did not register with the queue")
            time.sleep(0.2)

    def children(self) -> list[int]:
        """PIDs of the worker's children (its work horse while a job runs)."""
        pids: list[int] = []
        for task in Path(f"/proc/{self.proc.pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                pids += [int(p) for p in (task / "children").read_text().split()]
        return pids

    def kill(self) -> None:
        """SIGKILL the worker's main process only, like the OOM killer or ``kill -9`` would."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        for pid in self.children():  # a horse mid-job would otherwise finish its job first
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="session")
def worker(settings: Settings) -> Iterator[WorkerProcess]:
    w = WorkerProcess(settings)
    yield w
    w.stop()


@pytest.fixture(scope="session")
def live_server(settings: Settings, tmp_path_factory: pytest.TempPathFactory):
    """The API as a real uvicorn server on a free 127.0.0.1 port, sharing the run's queue and keys."""
    from tests.browser import LiveServer

    server = LiveServer(settings, tmp_path_factory.mktemp("live-server") / "uvicorn.log")
    yield server
    server.stop()
