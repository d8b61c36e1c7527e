"""The workers as seen through Redis: which are alive, which registrations are stale, what supervisors report.

A worker counts as alive only while its heartbeat is fresh: younger than the monitor interval plus
the heartbeat grace, the same window after which a job it runs is declared abandoned. RQ itself keeps
a dead worker registered until its hash expires (minutes), so readiness must not trust registration.

Hashes are read directly instead of through ``rq.Worker.all``: building ``Worker`` objects raises the
socket timeout of the caller's connection pool to RQ's blocking-dequeue timeout (415 s by default),
which would let a hung Redis hang API requests.

``atelier up`` supervisors publish their restart counts here (a hash per supervisor with a TTL, and a
set of their ids) so the API, which may run elsewhere, can report crash-looping workers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

from redis import Redis
from rq.utils import utcparse
from rq.worker_registration import REDIS_WORKER_KEYS, WORKERS_BY_QUEUE_KEY

from core.settings import Settings
from core.store import JobKeys

RQ_WORKER_KEY_PREFIX = "rq:worker:"


def heartbeat_window_s(settings: Settings) -> float:
    """A worker (or supervisor) silent for longer than this is dead."""
    return float(settings.worker_monitor_interval_s + settings.heartbeat_grace_s)


@dataclass(frozen=True)
class WorkerBeat:
    """One registered worker and its last heartbeat (None: its hash is gone or never had one)."""

    name: str
    pid: int | None
    last_heartbeat: datetime | None

    def is_fresh(self, window_s: float) -> bool:
        if self.last_heartbeat is None:
            return False
        return datetime.now(UTC) - self.last_heartbeat <= timedelta(seconds=window_s)


def _decode(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def registered_workers(redis: Redis, queue_name: str) -> list[WorkerBeat]:
    keys = sorted(_decode(k) or "" for k in redis.smembers(WORKERS_BY_QUEUE_KEY % queue_name))
    with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hmget(key, "pid", "last_heartbeat")
        rows = pipe.execute()
    beats = []
    for key, (pid, heartbeat) in zip(keys, rows, strict=True):
        pid_text, beat_text = _decode(pid), _decode(heartbeat)
        beats.append(
            WorkerBeat(
                name=key.removeprefix(RQ_WORKER_KEY_PREFIX),
                pid=int(pid_text) if pid_text and pid_text.isdigit() else None,
                last_heartbeat=utcparse(beat_text).replace(tzinfo=UTC) if beat_text else None,
            )
        )
    return beats


def live_workers(redis: Redis, queue_name: str, window_s: float) -> list[WorkerBeat]:
    return [w for w in registered_workers(redis, queue_name) if w.is_fresh(window_s)]


def forget_worker(redis: Redis, queue_name: str, worker_name: str) -> None:
    """Unregister one worker; its hash expires by itself, and a live one re-registers at its next beat."""
    key = RQ_WORKER_KEY_PREFIX + worker_name
    with redis.pipeline(transaction=False) as pipe:
        pipe.srem(WORKERS_BY_QUEUE_KEY % queue_name, key)
        pipe.srem(REDIS_WORKER_KEYS, key)
        pipe.execute()


def forget_dead_workers(redis: Redis, queue_name: str, window_s: float) -> list[str]:
    """Unregister workers of this queue whose heartbeat went stale (SIGKILL, OOM, lost machine)."""
    dead = [w.name for w in registered_workers(redis, queue_name) if not w.is_fresh(window_s)]
    for name in dead:
        forget_worker(redis, queue_name, name)
    return dead


@dataclass(frozen=True)
class SupervisorReport:
    """What one ``atelier up`` (or ``atelier worker --workers N``) tells the API about its workers."""

    id: str
    host: str
    pid: int
    queue: str
    workers_wanted: int
    workers_running: int
    worker_restarts: int
    crash_looping: int
    last_restart: str = ""

    def to_hash(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes]) -> SupervisorReport:
        data = {k.decode(): v.decode() for k, v in raw.items()}
        return cls(
            id=data.get("id", "?"),
            host=data.get("host", "?"),
            pid=int(data.get("pid", 0)),
            queue=data.get("queue", ""),
            workers_wanted=int(data.get("workers_wanted", 0)),
            workers_running=int(data.get("workers_running", 0)),
            worker_restarts=int(data.get("worker_restarts", 0)),
            crash_looping=int(data.get("crash_looping", 0)),
            last_restart=data.get("last_restart", ""),
        )


def publish_report(redis: Redis, keys: JobKeys, report: SupervisorReport, ttl_s: float) -> None:
    with redis.pipeline() as pipe:
        pipe.hset(keys.supervisor(report.id), mapping=report.to_hash())
        pipe.expire(keys.supervisor(report.id), max(1, round(ttl_s)))
        pipe.sadd(keys.supervisors, report.id)
        pipe.execute()


def withdraw_report(redis: Redis, keys: JobKeys, supervisor_id: str) -> None:
    with redis.pipeline() as pipe:
        pipe.delete(keys.supervisor(supervisor_id))
        pipe.srem(keys.supervisors, supervisor_id)
        pipe.execute()


def read_reports(redis: Redis, keys: JobKeys) -> list[SupervisorReport]:
    """Reports of supervisors alive now; ids whose report expired (SIGKILLed supervisor) are dropped."""
    ids = sorted(_decode(i) or "" for i in redis.smembers(keys.supervisors))
    with redis.pipeline(transaction=False) as pipe:
        for supervisor_id in ids:
            pipe.hgetall(keys.supervisor(supervisor_id))
        rows = pipe.execute()
    expired = [i for i, raw in zip(ids, rows, strict=True) if not raw]
    if expired:
        redis.srem(keys.supervisors, *expired)
    return [SupervisorReport.from_hash(raw) for raw in rows if raw]


@dataclass(frozen=True)
class FleetStatus:
    """Live workers of one queue plus what the supervisors report; what /readyz and /metrics show."""

    alive: list[WorkerBeat]
    reports: list[SupervisorReport]

    @property
    def worker_restarts(self) -> int:
        return sum(r.worker_restarts for r in self.reports)

    @property
    def crash_looping(self) -> int:
        return sum(r.crash_looping for r in self.reports)


def fleet_status(redis: Redis, settings: Settings) -> FleetStatus:
    reports = read_reports(redis, JobKeys(settings.key_prefix))
    return FleetStatus(
        alive=live_workers(redis, settings.queue_name, heartbeat_window_s(settings)),
        reports=[r for r in reports if r.queue == settings.queue_name],
    )
