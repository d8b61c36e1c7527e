"""``atelier up`` as a supervisor, with real processes: stop signals, SIGKILL, dead workers, running jobs.

Each ``atelier up`` runs in its own session, so its process group and every descendant can be
checked afterwards. Heartbeats, grace and backoff are shortened through ATELIER_* variables.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from app.fleet import registered_workers
from app.main import create_app
from app.routers.jobs import job_state
from app.supervisor import Backoff, describe_exit
from core.exit_codes import ExitCode
from core.settings import Settings
from tests.conftest import PROJECT_ROOT, WorkerProcess, _purge, make_settings
from tests.images import encode, photo_like, stripes
from tests.test_jobs_api import _free_port, submit, wait_for

FAST = {
    "ATELIER_WORKER_MONITOR_INTERVAL_S": "1",
    "ATELIER_HEARTBEAT_GRACE_S": "2",
    "ATELIER_REAPER_INTERVAL_S": "1",
    "ATELIER_WORKER_RESTART_BACKOFF_S": "0.2",
    "ATELIER_WORKER_RESTART_BACKOFF_MAX_S": "3",
    "ATELIER_SHUTDOWN_GRACE_S": "5",
    "ATELIER_TORCH_THREADS": "1",
}


# --- processes, as /proc sees them ----------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    """A process identified by PID *and* start time, so a recycled PID is never mistaken for it."""

    pid: int
    pgid: int
    start: int
    cmdline: str


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, pgid, start time) of a process, or None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[2]), int(fields[19])


def proc(pid: int) -> Proc | None:
    stat = _stat(pid)
    if stat is None:
        return None
    with contextlib.suppress(OSError):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        return Proc(pid, stat[1], stat[2], cmdline)
    return None


def running(p: Proc) -> bool:
    """Still there and not a zombie (a zombie has exited; only its parent's bookkeeping remains)."""
    stat = _stat(p.pid)
    return stat is not None and stat[2] == p.start and stat[0] != "Z"


def children(pid: int) -> list[Proc]:
    pids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            pids += [int(p) for p in (task / "children").read_text().split()]
    return [p for p in map(proc, pids) if p is not None]


def descendants(pid: int) -> list[Proc]:
    found = children(pid)
    for child in list(found):
        found += descendants(child.pid)
    return found


def in_groups(pgids: set[int]) -> list[Proc]:
    """Every live process in any of these process groups."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (p := proc(int(entry.name))) and p.pgid in pgids and running(p):
            found.append(p)
    return found


def eventually(check: Callable[[], object], timeout_s: float, what: str, every_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(every_s)


# --- a real `atelier up` --------------------------------------------------------------------------


class Up:
    """``atelier up`` in its own session (process group = its PID), logging to a file."""

    def __init__(self, settings: Settings, log_path: Path, workers: int = 1, **env: str) -> None:
        self.settings = settings
        self.port = _free_port()
        self.workers = workers
        self.log_path = log_path
        full_env = (
            os.environ
            | FAST
            | {
                "ATELIER_REDIS_URL": settings.redis_url,
                "ATELIER_QUEUE_NAME": settings.queue_name,
                "ATELIER_KEY_PREFIX": settings.key_prefix,
            }
        )
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "up", "--port", str(self.port), "--workers", str(workers)],
                env=full_env | env,
                cwd=PROJECT_ROOT,
                start_new_session=True,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def readyz(self) -> dict | None:
        try:
            resp = self.http.get("/readyz")
        except httpx.HTTPError:
            return None
        return resp.json() | {"status": resp.status_code}

    def wait_ready(self, timeout_s: float = 90) -> dict:
        """The API answers and all workers heartbeat (the models' checks are not looked at)."""

        def ready() -> dict | None:
            assert self.proc.poll() is None, f"atelier up exited early:\n{self.log}"
            body = self.readyz()
            workers = body["checks"]["workers"] if body else {}
            return body if workers.get("ok") and workers["alive"] == self.workers else None

        return eventually(ready, timeout_s, f"atelier up serving with {self.workers} worker(s)", every_s=0.3)

    def worker_procs(self) -> list[Proc]:
        return [p for p in children(self.proc.pid) if " worker " in p.cmdline]

    def everything(self) -> list[Proc]:
        """The supervisor and all it started, right now."""
        return [proc(self.proc.pid), *descendants(self.proc.pid)]

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"atelier up did not stop on {sig!r}:\n{self.log}") from None

    def kill_all(self) -> None:
        """Test cleanup only: whatever is left, by process group."""
        for p in self.everything():
            if p is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self.http.close()


@pytest.fixture
def up_factory(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., Up]]:
    started: list[Up] = []

    def start(name: str, workers: int = 1, redis: str | None = None, **env: str) -> Up:
        settings = make_settings(redis or redis_url, name=name)
        up = Up(settings, tmp_path / f"{name}.log", workers=workers, **env)
        started.append(up)
        return up

    yield start
    for up in started:
        up.kill_all()
        with contextlib.suppress(RedisConnectionError):  # a Redis `atelier up` launched is gone
            _purge(up.settings)


@pytest.fixture
def isolated(redis_url: str) -> Iterator[Callable[[str], Settings]]:
    """Settings with their own queue and key prefix, purged from Redis afterwards."""
    made: list[Settings] = []

    def make(name: str) -> Settings:
        made.append(make_settings(redis_url, name=name))
        return made[-1]

    yield make
    for settings in made:
        _purge(settings)


def assert_nothing_left(snapshot: list[Proc], up: Up, timeout_s: float) -> None:
    """No process of the snapshot runs, and no process runs in any of their process groups."""
    groups = {p.pgid for p in snapshot}
    eventually(lambda: not [p for p in snapshot if running(p)], timeout_s, "every process gone")
    assert not in_groups(groups), f"left behind: {in_groups(groups)}\n{up.log}"
    assert up.proc.pid in groups  # the supervisor's own group was checked too


def submit_http(up: Up, steps: int, size: int) -> str:
    files = [
        ("content", ("photo.png", encode(photo_like()), "image/png")),
        ("style", ("style.png", encode(stripes()), "image/png")),
    ]
    resp = up.http.post("/jobs/optimize", files=files, data={"steps": str(steps), "size": str(size)})
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def wait_started(up: Up, job_id: str, timeout_s: float = 60) -> None:
    def started() -> bool:
        body = up.http.get(f"/jobs/{job_id}").json()
        assert body["state"] in ("queued", "started"), body
        return body["state"] == "started" and body["progress"]["step"] >= 1

    eventually(started, timeout_s, f"job {job_id} running", every_s=0.1)


# --- pure parts -----------------------------------------------------------------------------------


def test_backoff_doubles_per_early_death_and_is_capped() -> None:
    backoff = Backoff(base_s=0.5, max_s=4.0)
    assert [backoff.delay(n) for n in (1, 2, 3, 4, 5, 9)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.stable_after_s == 4.0
    assert describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"
    assert describe_exit(3) == "exited with status 3"


# --- stopping ---------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server to launch")
def test_sigterm_stops_api_workers_and_the_redis_it_started(up_factory) -> None:
    redis_port = _free_port()
    up = up_factory("sigterm", workers=1, redis=f"redis://127.0.0.1:{redis_port}/0")
    up.wait_ready()
    snapshot = up.everything()
    kinds = " | ".join(p.cmdline for p in snapshot)
    assert " api " in kinds and " worker " in kinds and "redis-server" in kinds, kinds

    assert up.stop(signal.SIGTERM) == ExitCode.OK, up.log
    assert_nothing_left(snapshot, up, timeout_s=5)
    with pytest.raises(RedisConnectionError):
        Redis(port=redis_port, socket_connect_timeout=0.5).ping()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server to launch")
def test_sigkill_of_up_leaves_no_process_behind(up_factory) -> None:
    up = up_factory("sigkill", workers=2, redis=f"redis://127.0.0.1:{_free_port()}/0")
    up.wait_ready()
    snapshot = up.everything()
    assert len([p for p in snapshot if " worker " in p.cmdline]) == 2

    os.kill(up.proc.pid, signal.SIGKILL)
    up.proc.wait(timeout=5)
    started = time.monotonic()
    assert_nothing_left(snapshot, up, timeout_s=10)
    assert time.monotonic() - started < 10


# --- dead workers ---------------------------------------------------------------------------------


def test_killed_worker_is_reaped_and_replaced_and_crash_loops_are_reported(up_factory) -> None:
    up = up_factory("reap", workers=1, ATELIER_WORKER_RESTART_BACKOFF_MAX_S="5")  # stable after 5 s
    up.wait_ready()
    restarts = 0
    for _ in range(3):  # the 2nd and 3rd die right after starting: a crash loop
        [victim] = eventually(up.worker_procs, 30, "a worker process")
        os.kill(victim.pid, signal.SIGKILL)
        restarts += 1
        eventually(lambda v=victim: proc(v.pid) is None, 2, "the dead worker reaped (no zombie)")
        eventually(lambda v=victim: [p for p in up.worker_procs() if p.pid != v.pid], 5, "a replacement")

    # A report published between the third death and its restart says crash_looping 1 with 2 restarts
    # done: wait for the one after the restart (the count is of restarts made, not scheduled).
    looping = eventually(
        lambda: (
            (b := up.readyz())
            and b["checks"]["workers"]["crash_looping"] == 1
            and b["checks"]["workers"]["restarts"] == restarts
            and b
        ),
        10,
        f"crash loop reported with {restarts} restarts",
    )
    assert "was killed by SIGKILL" in looping["checks"]["workers"]["supervisors"][0]["last_restart"]
    counted = re.search(
        r'^atelier_worker_restarts_total\{supervisor="[^"]+"\} (\S+)$', up.http.get("/metrics").text, re.M
    )
    assert counted and float(counted.group(1)) == restarts
    assert "was killed by SIGKILL" in up.log and "restart #3" in up.log

    up.wait_ready()  # the replacement serves the queue
    job_id = submit_http(up, steps=3, size=32)
    eventually(lambda: up.http.get(f"/jobs/{job_id}").json()["state"] == "finished", 60, "job finished")
    # Once the replacement has stayed up for the stable period, the crash loop is over.
    eventually(lambda: up.readyz()["checks"]["workers"]["crash_looping"] == 0, 10, "crash loop cleared")

    snapshot = up.everything()
    assert up.stop(signal.SIGHUP) == ExitCode.OK, up.log
    assert_nothing_left(snapshot, up, timeout_s=5)


def test_readyz_counts_only_fresh_heartbeats_and_forgets_dead_workers(redis_url, isolated) -> None:
    settings = isolated("fresh")
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 503  # no worker on this queue yet
        worker = WorkerProcess(settings)
        try:
            ready = client.get("/readyz")
            assert ready.status_code == 200 and ready.json()["checks"]["workers"]["alive"] == 1
            worker.kill()  # SIGKILL: RQ's registration stays behind
            redis = Redis.from_url(redis_url)

            def not_ready() -> bool:
                resp = client.get("/readyz")
                return resp.status_code == 503 and resp.json()["checks"]["workers"]["alive"] == 0

            eventually(not_ready, 10, "/readyz 503 once the heartbeat is stale")
            eventually(lambda: not registered_workers(redis, settings.queue_name), 5, "registration dropped")
        finally:
            worker.stop()


# --- running jobs at shutdown -----------------------------------------------------------------------


def test_jobs_running_during_sigterm_end_finished_or_failed_never_started(up_factory) -> None:
    up = up_factory("warm", workers=2, ATELIER_SHUTDOWN_GRACE_S="8", ATELIER_SHUTDOWN_MAX_REQUEUES="0")
    up.wait_ready()
    long_job = submit_http(up, steps=2000, size=64)
    wait_started(up, long_job)
    short_job = submit_http(up, steps=25, size=32)
    wait_started(up, short_job)
    snapshot = up.everything()

    assert up.stop(signal.SIGTERM) == ExitCode.JOBS_INTERRUPTED, up.log
    redis = Redis.from_url(up.settings.redis_url)
    short = Job.fetch(short_job, connection=redis, serializer=JSONSerializer)
    long = Job.fetch(long_job, connection=redis, serializer=JSONSerializer)
    assert job_state(short) == "finished", up.log
    assert job_state(long) == "failed", up.log
    assert "shut down" in long.meta["error"] and "8 s shutdown grace" in long.meta["error"]
    assert not StartedJobRegistry(up.settings.queue_name, connection=redis).get_job_ids()
    assert_nothing_left(snapshot, up, timeout_s=5)


def test_worker_requeues_a_job_cut_by_shutdown_then_fails_it_past_the_limit(isolated, monkeypatch) -> None:
    monkeypatch.setenv("ATELIER_SHUTDOWN_GRACE_S", "1")  # WorkerProcess passes the environment on
    settings = isolated("requeue")
    with TestClient(create_app(settings)) as client:
        job = submit(client, steps=2000, size=48)
        for round_, stop_signal in enumerate((signal.SIGINT, signal.SIGTERM), start=1):
            worker = WorkerProcess(settings)
            try:
                wait_for(
                    client,
                    job["id"],
                    {"started"},
                    timeout_s=60,
                    predicate=lambda b: b["progress"]["step"] >= 1,
                )
                os.kill(worker.proc.pid, stop_signal)
                assert worker.proc.wait(timeout=30) == ExitCode.JOBS_INTERRUPTED
            finally:
                worker.stop()
            body = client.get(f"/jobs/{job['id']}").json()
            if round_ == 1:  # back on the queue, as if never started
                assert body["state"] == "queued" and body["progress"]["step"] == 0, body
            else:  # the default limit is one requeue
                assert body["state"] == "failed", body
                assert "shut down" in body["error"] and "(2 times)" in body["error"], body
