"""The worker process: preload VGG19, then serve the queue with RQ's forking worker.

Run it with ``atelier worker`` (or ``python -m worker``); several may share a queue, on one machine
or many.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from types import FrameType

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Worker, worker_registration
from rq.exceptions import StopRequested
from rq.executions import Execution
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.utils import now
from rq.worker import WorkerStatus

from core.exit_codes import ExitCode
from core.queue import make_queue
from core.redis_conn import connect
from core.settings import Settings, get_settings
from worker import runtime
from worker.patience import TRANSIENT

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
HORSE_POLL_S = 0.1
PUBSUB_POLL_S = 1.0


class AtelierWorker(Worker):
    """RQ's forking worker with the heartbeats, shutdown and supervision Atelier needs.

    * Heartbeat window: RQ keeps a started job alive in its registry for ``monitor interval + 60 s``
      after each heartbeat; we shorten the fixed 60 s to ``heartbeat_grace_s`` so clients learn about
      a SIGKILLed or OOM-killed worker within a bounded, configurable time.
    * Idle heartbeats: ``run_worker`` sets ``worker_ttl`` so that an idle worker heartbeats every
      monitor interval (RQ's default is once per 405 s blocking dequeue), which keeps /readyz truthful.
      Each heartbeat also re-registers the worker, in case the API dropped it as stale while it hung.
    * Warm shutdown: SIGTERM, SIGINT and SIGHUP all mean "stop after the running job", but that job
      gets only ``shutdown_grace_s`` more; then its horse is killed and the job goes back to the front
      of the queue (at most ``shutdown_max_requeues`` times) or fails with a message, never staying
      ``started``. A second SIGINT (Ctrl-C again) cuts the grace to zero; further SIGTERMs (systemd and
      ``atelier up`` may both send one) change nothing.
    * Supervised (``supervisor_pid``): a worker whose ``atelier up`` is gone stops by itself.
    """

    heartbeat_grace_s: int = 10
    shutdown_grace_s: float = 30.0
    shutdown_max_requeues: int = 1
    supervisor_pid: int | None = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._stop_deadline: float | None = None
        self._grace_cut = False  # a second SIGINT: stop the running job without waiting
        self._interrupted_job_id: str | None = None
        self.jobs_interrupted = 0

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

    # --- heartbeats -------------------------------------------------------------------------------

    def heartbeat(self, timeout: int | None = None, pipeline=None) -> None:
        super().heartbeat(timeout, pipeline)
        worker_registration.register(self, pipeline if pipeline is not None else self.connection)
        if self._supervisor_gone() and self._stop_deadline is None:
            self.log.warning(
                "Worker %s: its supervisor (pid %s) is gone; stopping", self.name, self.supervisor_pid
            )
            self._begin_stop()

    def maintain_heartbeats(self, job: Job, execution: Execution) -> None:
        """Skip a beat while Redis is briefly unreachable (a restart) rather than quit mid-job.

        RQ lets the error escape the horse monitor, which kills the worker and fails its job; the
        next beat, a monitor interval later, goes through. An outage longer than the heartbeat
        grace still ends with the sweep failing the job, as when a worker dies.
        """
        try:
            super().maintain_heartbeats(job, execution)
        except TRANSIENT as exc:
            self.log.warning("Worker %s: heartbeat skipped, Redis unavailable (%s)", self.name, exc)

    def _supervisor_gone(self) -> bool:
        """Only the worker itself asks: a work horse's parent is the worker, not the supervisor."""
        return bool(self.supervisor_pid) and not self.is_horse and os.getppid() != self.supervisor_pid

    def subscribe(self) -> None:
        """RQ's command channel, read by a thread that wakes every ``PUBSUB_POLL_S`` instead of 60 s.

        At teardown RQ sends UNSUBSCRIBE and then stops the thread, and redis-py's ``stop()`` waits
        for it. When the reply wakes the thread before the stop flag is set (a busy CPU is enough),
        the thread goes back to a blocking read and an idle worker took up to 60 s to exit on SIGTERM;
        a short read bounds that wait.
        """
        self.log.info("Worker %s: subscribing to channel %s", self.name, self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(
            sleep_time=PUBSUB_POLL_S, daemon=True, exception_handler=self._pubsub_exception_handler
        )

    # --- shutdown -------------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_stop_signal)

    def setup_work_horse_signals(self) -> None:
        """A horse must not run the worker's stop handler: it dies by SIGTERM/SIGHUP, ignores SIGINT."""
        super().setup_work_horse_signals()
        signal.signal(signal.SIGHUP, signal.SIG_DFL)

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self._stop_deadline is None:
            self.log.info(
                "Worker %s: %s: stopping after the running job (at most %s s more)",
                self.name,
                name,
                self.shutdown_grace_s,
            )
            self._begin_stop()
        elif signum == signal.SIGINT:
            self.log.warning("Worker %s: SIGINT again: stopping the running job now", self.name)
            self._stop_deadline = time.monotonic()
            self._grace_cut = True
        else:
            self.log.info("Worker %s: %s: already stopping", self.name, name)

    def _begin_stop(self) -> None:
        """Idle: leave the work loop now. Busy: finish the job if it ends within the grace."""
        self._stop_deadline = time.monotonic() + self.shutdown_grace_s
        self._shutdown_requested_date = now()
        if self.get_state() != WorkerStatus.BUSY:
            raise StopRequested()
        self._stop_requested = True
        with contextlib.suppress(RedisError):
            self.set_shutdown_requested_date()

    def wait_for_horse(self) -> tuple[int | None, int | None, object]:
        """Wait for the horse like RQ does, but stop its job once a stop request's grace has run out.

        Polls instead of blocking in ``wait4`` because signal handlers must not raise here: RQ's
        monitor loop only expects its own heartbeat alarm to interrupt the wait.
        """
        while True:
            try:
                pid, status, rusage = os.wait4(self.horse_pid, os.WNOHANG)
            except ChildProcessError:
                return None, None, None
            if pid:
                return pid, status, rusage
            deadline = self._stop_deadline
            if deadline is not None and self._interrupted_job_id is None and time.monotonic() >= deadline:
                self._stop_running_job()
            time.sleep(HORSE_POLL_S)

    def _stop_running_job(self) -> None:
        self._interrupted_job_id = self.get_current_job_id() or ""
        self.log.warning(
            "Worker %s: stopping job %s: %s", self.name, self._interrupted_job_id, self._why_stopped()
        )
        self.kill_horse(signal.SIGKILL)

    def _why_stopped(self) -> str:
        if self._grace_cut:
            return "the worker was told twice to stop, so it did not wait for the job"
        return f"the job could not finish within the {self.shutdown_grace_s:g} s shutdown grace"

    def handle_job_failure(
        self,
        job: Job,
        queue: Queue,
        started_job_registry=None,
        exc_string: str = "",
        execution: Execution | None = None,
    ) -> None:
        """A job stopped by a shutdown is requeued (up to the limit) or failed with a readable reason."""
        if job.id != self._interrupted_job_id:
            super().handle_job_failure(job, queue, started_job_registry, exc_string, execution)
            return
        self._interrupted_job_id = None
        self.jobs_interrupted += 1
        meta = job.get_meta(refresh=True)
        requeues = int(meta.get("shutdown_requeues", 0))
        if requeues < self.shutdown_max_requeues:
            self._requeue(job, queue, execution, requeues + 1)
            return
        times = f" ({requeues + 1} times)" if requeues else ""
        message = (
            f"the worker was shut down while this job ran{times}: {self._why_stopped()}; submit it again"
        )
        job.meta["error"] = message
        with contextlib.suppress(RedisError):
            job.save_meta()
        super().handle_job_failure(job, queue, started_job_registry, message, execution)
        self.log.warning("Worker %s: job %s failed: %s", self.name, job.id, message)

    def _requeue(self, job: Job, queue: Queue, execution: Execution | None, requeues: int) -> None:
        """Back to the front of the queue, as if never started: a later worker runs it from scratch."""
        job.meta.pop("progress", None)
        job.meta["shutdown_requeues"] = requeues
        job.started_at = job.ended_at = None
        # One transaction: the job is never both queued and in the started registry, nor in neither.
        # (`_enqueue_job` is what RQ's own FailedJobRegistry.requeue uses; `enqueue_job` would start
        # a second MULTI for dependencies, which this job has none of.)
        with self.connection.pipeline() as pipe:
            self.cleanup_execution(job, pipeline=pipe, execution=execution)
            queue._enqueue_job(job, pipeline=pipe, at_front=True)
            pipe.execute()
        self.log.warning(
            "Worker %s: job %s requeued after a shutdown (%d of at most %d)",
            self.name,
            job.id,
            requeues,
            self.shutdown_max_requeues,
        )


def run_worker(
    settings: Settings | None = None,
    *,
    burst: bool = False,
    name: str | None = None,
    supervisor_pid: int | None = None,
) -> ExitCode:
    """Serve the queue in this process until stopped (signal, burst done); the code says how it ended."""
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
        worker_ttl=settings.worker_monitor_interval_s + 15,  # RQ's blocking dequeue lasts ttl - 15 s
        default_result_ttl=settings.result_ttl_s,
    )
    worker.heartbeat_grace_s = settings.heartbeat_grace_s
    worker.shutdown_grace_s = settings.shutdown_grace_s
    worker.shutdown_max_requeues = settings.shutdown_max_requeues
    worker.supervisor_pid = supervisor_pid
    log.info("worker %s (pid %s) serving queue %r", worker.name, os.getpid(), settings.queue_name)
    worker.work(burst=burst, logging_level="INFO", with_scheduler=False)
    return ExitCode.JOBS_INTERRUPTED if worker.jobs_interrupted else ExitCode.OK


if __name__ == "__main__":
    raise SystemExit(run_worker())
