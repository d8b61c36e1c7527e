"""Redis with append-only persistence (as docker-compose runs it) keeps jobs and results over a restart.

The test runs its own redis-server (a temporary directory, a free port, the compose file's
persistence options), a real worker and the real API; finishes one job, leaves another queued,
restarts Redis, and checks that the finished job, its exact result bytes and the queued job are all
still there, and that the queued job then runs.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from redis import Redis
from redis.exceptions import RedisError

from app.main import create_app
from tests.browser import free_port
from tests.conftest import PROJECT_ROOT, WorkerProcess, make_settings
from tests.images import encode, photo_like, stripes
from tests.videos import make_clip

COMPOSE = PROJECT_ROOT / "docker-compose.yml"
# The connection pool retries a refused connection for ATELIER_REDIS_RETRY_S (5 s by default), which
# would hide a short outage from the job: cut it, so that the job's own patience is what is tested.
SHORT_CONNECTION_RETRY = {"ATELIER_REDIS_RETRY_S": "0.5"}


def compose_redis_options() -> list[str]:
    """The persistence options docker-compose gives its redis-server (minus the container's --dir)."""
    command = yaml.safe_load(COMPOSE.read_text())["services"]["redis"]["command"]
    assert command[0] == "redis-server"
    options = command[1:]
    if "--dir" in options:
        i = options.index("--dir")
        del options[i : i + 2]
    return options


class RedisServer:
    """A redis-server of our own on 127.0.0.1, with its data in ``directory``."""

    def __init__(self, directory: Path, options: list[str]) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.directory, self.options = directory, options
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        server = shutil.which("redis-server")
        assert server, "redis-server is needed (the test suite's Redis comes from it too)"
        self.proc = subprocess.Popen(
            [
                server,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                *self.options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                if Redis.from_url(self.url, socket_connect_timeout=1).ping():
                    return
            except RedisError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.1)

    def stop(self) -> None:
        """A normal stop (SIGTERM), as `docker compose restart redis` or systemd would do."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, compose_redis_options())
    server.start()
    yield server
    server.stop()


def _submit(client: TestClient, steps: int) -> str:
    files = [
        ("content", ("photo.png", encode(photo_like()), "image/png")),
        ("style", ("style.png", encode(stripes()), "image/png")),
    ]
    resp = client.post("/jobs/optimize", files=files, data={"size": "32", "steps": str(steps)})
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def _get(client: TestClient, url: str, timeout_s: float = 30):
    """GET through a Redis restart: the first calls may find the old connections closed (503)."""
    deadline = time.monotonic() + timeout_s
    while True:
        resp = client.get(url)
        if resp.status_code != 503 or time.monotonic() > deadline:
            return resp
        time.sleep(0.2)


def _wait_state(client: TestClient, job_id: str, states: set[str], timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = _get(client, f"/jobs/{job_id}").json()
        if body["state"] in states:
            return body
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never reached {states}: {body}")


def test_compose_runs_redis_with_append_only_persistence_on_a_volume():
    redis = yaml.safe_load(COMPOSE.read_text())["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--dir") + 1] == "/data"
    assert any(v.endswith(":/data") for v in redis["volumes"])


def test_a_redis_restart_loses_no_finished_result_and_no_queued_job(own_redis: RedisServer):
    settings = make_settings(own_redis.url, "durable")
    with TestClient(create_app(settings)) as client:
        worker = WorkerProcess(settings)
        try:
            finished = _submit(client, steps=3)
            assert _wait_state(client, finished, {"finished", "failed"})["state"] == "finished"
            result = client.get(f"/jobs/{finished}/result")
            assert result.status_code == 200 and result.content[:8] == b"\x89PNG\r\n\x1a\n"
        finally:
            worker.stop()
        queued = _submit(client, steps=3)  # no worker now: it waits in the queue

        own_redis.stop()
        own_redis.start()  # same directory: it replays its append-only file

        after = _get(client, f"/jobs/{finished}")
        assert after.status_code == 200 and after.json()["state"] == "finished"
        assert _get(client, f"/jobs/{finished}/result").content == result.content
        assert _get(client, f"/jobs/{queued}").json()["state"] == "queued"
        worker = WorkerProcess(settings)
        try:
            assert _wait_state(client, queued, {"finished", "failed"})["state"] == "finished"
        finally:
            worker.stop()


def test_a_job_running_through_a_redis_restart_still_finishes(own_redis: RedisServer):
    """The worker skips heartbeats and the job retries its Redis calls while Redis is down."""
    settings = make_settings(own_redis.url, "blip", heartbeat_grace_s=10)
    with TestClient(create_app(settings)) as client:
        worker = WorkerProcess(settings, extra_env=SHORT_CONNECTION_RETRY)
        try:
            job = _submit(client, steps=120)
            deadline = time.monotonic() + 120
            while _get(client, f"/jobs/{job}").json()["progress"]["step"] < 1:
                assert time.monotonic() < deadline, "the job never started"
                time.sleep(0.2)
            outage_began = datetime.now(UTC)
            own_redis.stop()
            time.sleep(2)  # the job keeps computing; its Redis calls wait
            own_redis.start()
            done = _wait_state(client, job, {"finished", "failed"}, timeout_s=600)
            assert done["state"] == "finished", done
            ended = datetime.fromisoformat(done["ended_at"])
            assert (ended if ended.tzinfo else ended.replace(tzinfo=UTC)) > outage_began  # it ran through it
            assert worker.proc.poll() is None  # and the worker did not die of the outage
        finally:
            worker.stop()


def test_a_video_job_running_through_a_redis_restart_still_finishes(own_redis: RedisServer):
    """Like the Gatys job: the video job's progress, cancel checks and result wait for Redis."""
    settings = make_settings(own_redis.url, "blip-video", heartbeat_grace_s=10)
    frames = 360
    clip = make_clip(frames=frames, width=96, height=64, fps=30, audio=False)
    with TestClient(create_app(settings)) as client:
        style = client.get("/styles").json()["styles"][0]["name"]
        worker = WorkerProcess(settings, extra_env=SHORT_CONNECTION_RETRY)
        try:
            files = {"file": ("clip.mp4", clip, "video/mp4")}
            resp = client.post("/jobs/stylize-video", files=files, data={"style": style, "size": "256"})
            assert resp.status_code == 202, resp.text
            job = resp.json()["id"]
            deadline = time.monotonic() + 120
            while (_get(client, f"/jobs/{job}").json()["progress"] or {}).get("frames", 0) < 1:
                assert time.monotonic() < deadline, "the job never started"
                time.sleep(0.1)
            outage_began = datetime.now(UTC)
            own_redis.stop()
            time.sleep(5)  # longer than a batch of frames: the job's calls meet the outage
            own_redis.start()
            done = _wait_state(client, job, {"finished", "failed"}, timeout_s=600)
            assert done["state"] == "finished", done
            ended = datetime.fromisoformat(done["ended_at"])
            assert (ended if ended.tzinfo else ended.replace(tzinfo=UTC)) > outage_began
            assert done["progress"]["frames"] == frames
            assert worker.proc.poll() is None
        finally:
            worker.stop()


def test_the_api_rides_out_a_short_redis_restart_without_a_503(own_redis: RedisServer):
    """A refused connection is retried for ATELIER_REDIS_RETRY_S: a poll during a restart just waits."""
    settings = make_settings(own_redis.url, "ride", redis_retry_s=5.0)
    with TestClient(create_app(settings)) as client:
        job = _submit(client, steps=3)  # no worker: it stays queued
        own_redis.stop()
        restart = threading.Timer(1.5, own_redis.start)
        restart.start()
        try:
            during = client.get(f"/jobs/{job}")
        finally:
            restart.join()
        assert during.status_code == 200 and during.json()["state"] == "queued", during.text
