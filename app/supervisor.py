"""The supervisor behind ``atelier up``: starts Redis (if needed), the API and N workers, keeps them alive,
and stops them all on SIGINT, SIGTERM or SIGHUP.

One process, one thread, no torch. Signals only wake the main loop (a self-pipe), which then reaps
dead children at once, restarts dead workers with capped exponential backoff, and runs the shutdown.

* Children sit in their own process groups, so Ctrl-C in a terminal reaches only the supervisor, which
  stops the children in order (workers and API first, Redis last, once jobs are recorded).
* Children die with the supervisor even if it is SIGKILLed: each asks the kernel for SIGTERM on its
  parent's death (``core.parent_death``) and exits at once if the supervisor is already gone.
* A worker that keeps dying soon after each start is *crash-looping*; the counts are published in
  Redis for /readyz and /metrics.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from types import FrameType

from redis import Redis
from redis.exceptions import RedisError

from app.fleet import SupervisorReport, forget_worker, heartbeat_window_s, publish_report, withdraw_report
from app.redis_launcher import LaunchedRedis, ensure_redis
from core.exit_codes import ExitCode
from core.parent_death import SUPERVISOR_PID_ENV
from core.settings import Settings
from core.store import JobKeys

log = logging.getLogger("atelier.supervisor")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
CRASH_LOOP_AFTER = 3  # early deaths in a row
STOP_MARGIN_S = 15.0  # beyond the workers' grace: their bookkeeping, and uvicorn's 10 s graceful shutdown
MAX_SLEEP_S = 1.0


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-returncode).name}"
        return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


@dataclass(frozen=True)
class Backoff:
    """Restart delays: ``base_s`` after the first early death, doubling with each one in a row, capped."""

    base_s: float
    max_s: float

    def delay(self, early_deaths: int) -> float:
        return min(self.max_s, self.base_s * 2 ** max(0, early_deaths - 1))

    @property
    def stable_after_s(self) -> float:
        """A child that lived this long died of something new: its next restart starts from ``base_s``."""
        return self.max_s


@dataclass
class Child:
    """One supervised slot: the API, or worker N (each restart is a new process in the same slot)."""

    name: str
    kind: str  # "api" or "worker"
    proc: subprocess.Popen | None = None
    rq_name: str = ""
    started_at: float = 0.0
    starts: int = 0
    early_deaths: int = 0
    restart_at: float | None = None
    sent: int | None = None  # the stop signal we sent it
    returncode: int | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None

    @property
    def restarts(self) -> int:
        return max(0, self.starts - 1)


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        *,
        workers: int,
        api: tuple[str, int] | None = None,
        manage_redis: bool = False,
        burst: bool = False,
    ) -> None:
        self.settings = settings
        self.api = api
        self.manage_redis = manage_redis
        self.burst = burst
        self.backoff = Backoff(settings.worker_restart_backoff_s, settings.worker_restart_backoff_max_s)
        self.children = [Child(f"worker-{i + 1}", "worker") for i in range(workers)]
        if api is not None:
            self.children.insert(0, Child("api", "api"))
        self.id = f"{socket.gethostname()}:{os.getpid()}"
        self.keys = JobKeys(settings.key_prefix)
        self.redis_handle = LaunchedRedis()
        self.reporting: Redis | None = None
        self.stopping = False
        self.exit_code = ExitCode.OK
        self.kill_deadline = 0.0
        self.last_restart = ""
        self._next_report = 0.0
        self._report_failed = False
        self._signals: list[int] = []
        self._wakeup_r, self._wakeup_w = os.pipe()
        for fd in (self._wakeup_r, self._wakeup_w):
            os.set_blocking(fd, False)

    @property
    def workers(self) -> list[Child]:
        return [c for c in self.children if c.kind == "worker"]

    # --- entry point -----------------------------------------------------------------------------

    def run(self) -> int:
        previous = self._install_signal_handlers()
        try:
            if self.manage_redis:
                try:
                    self.redis_handle = ensure_redis(self.settings.redis_url)
                except SystemExit as exc:
                    log.error("%s", exc)
                    return ExitCode.ERROR
            self.reporting = Redis.from_url(
                self.settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5
            )
            for child in self.children:
                if not self.stopping:  # an API that could not even be spawned stops the rest
                    self._start(child)
            self._announce()
            return self._loop()
        finally:
            self._kill_all()
            self._withdraw_report()
            self.redis_handle.stop()
            self._restore_signal_handlers(previous)

    def _announce(self) -> None:
        what = f"{len(self.workers)} worker(s)"
        if self.api is not None:
            host, port = self.api
            what = f"API on http://{host}:{port} (docs at /docs), " + what
        print(f"Atelier: {what}, Redis at {self.settings.redis_url}. Ctrl-C stops everything.", flush=True)

    # --- the loop --------------------------------------------------------------------------------

    def _loop(self) -> int:
        while True:
            self._sleep(self._next_timeout())
            for signum in self._take_signals():
                self._on_signal(signum)
            self._reap()
            if self.stopping:
                if not any(c.running for c in self.children):
                    return self.exit_code
                if time.monotonic() >= self.kill_deadline:
                    self._kill_remaining()
            else:
                self._restart_due()
                if self.burst and not any(c.running or c.restart_at for c in self.workers):
                    return self._burst_exit_code()
            self._report()

    def _next_timeout(self) -> float:
        now = time.monotonic()
        moments = [self._next_report, now + MAX_SLEEP_S]
        moments += [c.restart_at for c in self.children if c.restart_at is not None]
        if self.stopping and self.kill_deadline > now:
            moments.append(self.kill_deadline)
        return max(0.0, min(moments) - now)

    # --- signals ---------------------------------------------------------------------------------

    def _install_signal_handlers(self) -> dict[int, object]:
        previous = {sig: signal.getsignal(sig) for sig in (*STOP_SIGNALS, signal.SIGCHLD)}
        for sig in previous:
            signal.signal(sig, self._on_signal_interrupt)
        previous["wakeup"] = signal.set_wakeup_fd(self._wakeup_w)
        return previous

    def _restore_signal_handlers(self, previous: dict) -> None:
        signal.set_wakeup_fd(previous.pop("wakeup"))
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(self._wakeup_r)
        os.close(self._wakeup_w)

    def _on_signal_interrupt(self, signum: int, frame: FrameType | None) -> None:
        self._signals.append(signum)  # handled in the loop, never here

    def _sleep(self, timeout: float) -> None:
        with contextlib.suppress(InterruptedError):
            select.select([self._wakeup_r], [], [], timeout)
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wakeup_r, 512):
                pass

    def _take_signals(self) -> list[int]:
        taken, self._signals = self._signals, []
        return taken

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGCHLD:
            return  # _reap runs next
        name = signal.Signals(signum).name
        if not self.stopping:
            log.info(
                "%s received: stopping the children (running jobs get %g s to finish)",
                name,
                self.settings.shutdown_grace_s,
            )
            self._begin_stop(ExitCode.OK)
        elif signum == signal.SIGINT:
            log.warning("SIGINT again: running jobs are stopped now")
            for child in self.children:
                self._signal(child, signal.SIGINT)
        else:
            log.info("%s received: already stopping", name)

    # --- children --------------------------------------------------------------------------------

    def _argv(self, child: Child) -> list[str]:
        """The command for the slot's next process; each worker process gets its own RQ name."""
        base = [sys.executable, "-m", "app.cli"]
        if child.kind == "api":
            host, port = self.api or ("127.0.0.1", 8000)
            return [*base, "api", "--host", host, "--port", str(port), "--workers", "1"]
        child.rq_name = f"{socket.gethostname()}.{os.getpid()}.{child.name}.{child.starts}"
        return [
            *base,
            "worker",
            "--workers",
            "1",
            "--name",
            child.rq_name,
            *(["--burst"] if self.burst else []),
        ]

    def _start(self, child: Child) -> None:
        env = os.environ | {SUPERVISOR_PID_ENV: str(os.getpid())}
        child.restart_at = None
        child.sent = None
        child.returncode = None
        child.started_at = time.monotonic()
        child.starts += 1
        try:
            child.proc = subprocess.Popen(self._argv(child), env=env, process_group=0)
        except OSError as exc:
            log.error("could not start %s: %s", child.name, exc)
            self._after_death(child, pid=None, how=f"could not start ({exc})", lived=0.0)
            return
        log.info("started %s (pid %s)", child.name, child.proc.pid)
        self._next_report = 0.0

    def _reap(self) -> None:
        """Collect every child that exited (no zombies), then restart it or stop everything."""
        for child in self.children:
            if child.proc is None or (returncode := child.proc.poll()) is None:
                continue
            pid, lived = child.proc.pid, time.monotonic() - child.started_at
            child.proc, child.returncode = None, returncode
            self._next_report = 0.0
            if self.stopping:
                self._note_stopped(child, pid, returncode)
            else:
                self._after_death(child, pid, describe_exit(returncode), lived)
        process = self.redis_handle.process
        if process is not None and not self.stopping and process.poll() is not None:
            log.error(
                "the redis-server started for Atelier %s; stopping everything",
                describe_exit(process.returncode),
            )
            self._begin_stop(ExitCode.CHILD_DIED)

    def _after_death(self, child: Child, pid: int | None, how: str, lived: float) -> None:
        if child.kind == "worker" and child.rq_name:
            self._forget(child.rq_name)
        if child.kind == "api":
            log.error("the API (pid %s) %s; stopping everything", pid, how)
            self._begin_stop(ExitCode.CHILD_DIED)
            return
        if self.burst:
            log.info("%s (pid %s) %s", child.name, pid, how)
            return
        child.early_deaths = child.early_deaths + 1 if lived < self.backoff.stable_after_s else 1
        delay = self.backoff.delay(child.early_deaths)
        child.restart_at = time.monotonic() + delay
        self.last_restart = (
            f"{child.name} (pid {pid}) {how} after {lived:.1f} s; "
            f"restart #{child.restarts + 1} in {delay:g} s"
        )
        log.warning("%s%s", self.last_restart, " (crash loop)" if self._crash_looping(child) else "")

    def _restart_due(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.restart_at is not None and now >= child.restart_at:
                self._start(child)
            elif (
                child.running and child.early_deaths and now - child.started_at >= self.backoff.stable_after_s
            ):
                child.early_deaths = 0  # it stayed up: the crash loop is over

    def _crash_looping(self, child: Child) -> bool:
        return child.early_deaths >= CRASH_LOOP_AFTER

    def _burst_exit_code(self) -> int:
        """All burst workers are done: the worst of their exit codes (killed by a signal counts as ERROR)."""
        codes = [c.returncode or 0 for c in self.workers]
        return max(code if code >= 0 else ExitCode.ERROR for code in codes)

    def _forget(self, rq_name: str) -> None:
        """Drop a dead worker's registration now, so /readyz stops counting it at once."""
        if self.reporting is None:
            return
        with contextlib.suppress(RedisError):
            forget_worker(self.reporting, self.settings.queue_name, rq_name)

    # --- stopping --------------------------------------------------------------------------------

    def _begin_stop(self, code: ExitCode) -> None:
        self.stopping = True
        self.exit_code = code
        self.kill_deadline = time.monotonic() + self.settings.shutdown_grace_s + STOP_MARGIN_S
        for child in self.children:
            child.restart_at = None
            self._signal(child, signal.SIGTERM)

    def _signal(self, child: Child, sig: int) -> None:
        if child.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            child.proc.send_signal(sig)
            child.sent = sig

    def _note_stopped(self, child: Child, pid: int, returncode: int) -> None:
        """A child that obeyed the stop (or died by the very signal we sent) stopped cleanly."""
        obeyed = {0, -(child.sent or 0), 128 + (child.sent or 0)}
        if returncode == ExitCode.JOBS_INTERRUPTED and child.kind == "worker":
            log.warning("%s (pid %s) stopped a job that outlived the grace", child.name, pid)
            self._mark_unclean()
        elif returncode not in obeyed:
            log.warning("%s (pid %s) %s while stopping", child.name, pid, describe_exit(returncode))
            self._mark_unclean()
        else:
            log.info("%s (pid %s) stopped", child.name, pid)

    def _mark_unclean(self) -> None:
        if self.exit_code == ExitCode.OK:
            self.exit_code = ExitCode.JOBS_INTERRUPTED

    def _kill_remaining(self) -> None:
        for child in self.children:
            if child.proc is not None and child.sent != signal.SIGKILL:
                log.warning("%s (pid %s) did not stop in time; killing it", child.name, child.proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.proc.pid, signal.SIGKILL)
                child.sent = signal.SIGKILL
                self._mark_unclean()

    def _kill_all(self) -> None:
        """Last resort (an exception in the loop): nothing this supervisor started may outlive it."""
        for child in self.children:
            if child.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait()
                child.proc = None

    # --- reporting -------------------------------------------------------------------------------

    def report(self) -> SupervisorReport:
        return SupervisorReport(
            id=self.id,
            host=socket.gethostname(),
            pid=os.getpid(),
            queue=self.settings.queue_name,
            workers_wanted=len(self.workers),
            workers_running=sum(c.running for c in self.workers),
            worker_restarts=sum(c.restarts for c in self.workers),
            crash_looping=sum(self._crash_looping(c) for c in self.workers),
            last_restart=self.last_restart,
        )

    def _report(self) -> None:
        """Publish the counts every monitor interval, and at once after a change."""
        if self.reporting is None or time.monotonic() < self._next_report:
            return
        self._next_report = time.monotonic() + self.settings.worker_monitor_interval_s
        try:
            publish_report(self.reporting, self.keys, self.report(), heartbeat_window_s(self.settings))
            self._report_failed = False
        except RedisError as exc:
            if not self._report_failed:
                log.warning("cannot publish worker counts to Redis: %s", exc)
            self._report_failed = True

    def _withdraw_report(self) -> None:
        if self.reporting is not None:
            with contextlib.suppress(RedisError):
                withdraw_report(self.reporting, self.keys, self.id)
