"""Make sure a Redis is there for ``atelier up``: use the configured one, else start one.

Order: the configured URL if it answers; else a local ``redis-server`` (nothing persisted); else an
embedded in-memory Redis (fakeredis) so that a fresh machine with nothing installed still runs.

A started ``redis-server`` sits in its own process group (Ctrl-C in the terminal reaches only the
supervisor, which stops Redis last, after the workers have recorded their jobs) and receives SIGTERM
if the process that started it dies, even by SIGKILL.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from urllib.parse import urlparse

from redis import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def reachable(url: str, timeout_s: float = 1.0) -> bool:
    try:
        return bool(Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s).ping())
    except RedisError:
        return False


def _wait_until_reachable(url: str, deadline_s: float) -> bool:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if reachable(url, 0.5):
            return True
        time.sleep(0.1)
    return False


class LaunchedRedis:
    """What ``ensure_redis`` started: call it (or ``stop()``) to stop it; ``process``: the redis-server."""

    def __init__(
        self, stop: Callable[[], None] = lambda: None, process: subprocess.Popen | None = None
    ) -> None:
        self._stop = stop
        self.process = process

    def stop(self) -> None:
        self._stop()

    __call__ = stop


def ensure_redis(url: str) -> LaunchedRedis:
    """Return a handle that stops whatever was started here (a no-op if Redis was already up)."""
    if reachable(url):
        log.info("using Redis at %s", url)
        return LaunchedRedis()
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
    if host not in LOCAL_HOSTS:
        raise SystemExit(
            f"Redis at {url} is unreachable. Start it, or set ATELIER_REDIS_URL to one that runs."
        )
    server = shutil.which("redis-server")
    if server:
        log.info("starting %s on %s:%s (in memory, nothing saved)", server, host, port)
        server_cmd = [server, "--bind", host, "--port", str(port), "--save", "", "--appendonly", "no"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "core.parent_death", str(os.getpid()), "--", *server_cmd],
            stdout=subprocess.DEVNULL,
            process_group=0,
        )
        if not _wait_until_reachable(url, 10):
            proc.kill()
            proc.wait()
            raise SystemExit(f"redis-server did not come up on {host}:{port}.")

        def stop_server() -> None:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

        return LaunchedRedis(stop_server, proc)
    return _start_embedded(url, host, port)


def _start_embedded(url: str, host: str, port: int) -> LaunchedRedis:
    """Fallback for machines without Redis: an in-process, in-memory server speaking the protocol."""
    from fakeredis import TcpFakeServer

    log.warning(
        "no Redis reachable and no redis-server installed: starting an embedded in-memory Redis on %s:%s. "
        "Jobs are lost when `atelier up` stops; install redis-server (apt-get install redis-server) "
        "or set ATELIER_REDIS_URL for real deployments.",
        host,
        port,
    )
    server = TcpFakeServer((host, port), server_type="redis")
    thread = threading.Thread(target=server.serve_forever, name="embedded-redis", daemon=True)
    thread.start()
    if not _wait_until_reachable(url, 10):
        raise SystemExit("the embedded Redis did not start")

    def stop_embedded() -> None:
        server.shutdown()
        server.server_close()

    return LaunchedRedis(stop_embedded)
