"""The Redis layout shared by the API (producer) and the workers (consumers).

Images never travel inside RQ's job payload: they are PNG bytes under their own keys with a TTL, and
the payload itself is JSON (RQ's JSONSerializer), so nothing read back from Redis can execute code.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis
from redis.client import Pipeline

JOB_FUNC = "worker.jobs.optimize_job"
VIDEO_JOB_FUNC = "worker.video_job.stylize_video_job"
STYLE_JOB_FUNC = "worker.style_job.train_style_job"
IMAGE_JOB_FUNC = "worker.image_job.stylize_image_job"
JOB_KINDS = {
    JOB_FUNC: "optimize",
    VIDEO_JOB_FUNC: "stylize-video",
    STYLE_JOB_FUNC: "train-style",
    IMAGE_JOB_FUNC: "stylize-image",
}
JOB_DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)


@dataclass(frozen=True)
class JobKeys:
    """Names of one deployment's keys; ``prefix`` isolates deployments and test runs."""

    prefix: str

    def content(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}:content"

    def style(self, job_id: str, index: int) -> str:
        return f"{self.prefix}job:{job_id}:style:{index}"

    def video(self, job_id: str) -> str:
        """The uploaded video, as sent (compressed bytes; frames are only ever decoded in the worker)."""
        return f"{self.prefix}job:{job_id}:video"

    def result(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}:result"

    def preview(self, job_id: str) -> str:
        """A running job's latest preview (JPEG); its step is in the job's progress."""
        return f"{self.prefix}job:{job_id}:preview"

    def cancel(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}:cancel"

    def webhook(self, job_id: str) -> str:
        """Where to tell the job's submitter that it ended, and how its delivery went (a hash)."""
        return f"{self.prefix}job:{job_id}:webhook"

    def everything_of(self, job_id: str, styles: int) -> list[str]:
        """Every key a job may have stored (inputs, result, preview, flags), for deleting it."""
        inputs = [self.content(job_id), self.video(job_id), *(self.style(job_id, i) for i in range(styles))]
        return [*inputs, self.result(job_id), self.preview(job_id), self.cancel(job_id), self.webhook(job_id)]

    @property
    def webhooks_due(self) -> str:
        """Sorted set of job ids with a webhook to send, scored by when to look at each next (ms)."""
        return f"{self.prefix}webhooks:due"

    @property
    def job_stats(self) -> str:
        return f"{self.prefix}stats:jobs"

    @property
    def supervisors(self) -> str:
        """Set of the ids of running ``atelier up`` supervisors (each with its own report hash)."""
        return f"{self.prefix}supervisors"

    def supervisor(self, supervisor_id: str) -> str:
        return f"{self.prefix}supervisor:{supervisor_id}"


def request_cancel(redis: Redis, keys: JobKeys, job_id: str, ttl_s: int) -> None:
    redis.set(keys.cancel(job_id), b"1", ex=ttl_s)


def cancel_requested(redis: Redis, keys: JobKeys, job_id: str) -> bool:
    return bool(redis.exists(keys.cancel(job_id)))


def record_job_duration(pipeline: Pipeline, keys: JobKeys, state: str, seconds: float) -> None:
    """Add one job's run time to the cumulative histogram counters that /metrics renders."""
    pipeline.hincrby(keys.job_stats, f"count:{state}", 1)
    pipeline.hincrbyfloat(keys.job_stats, f"sum:{state}", seconds)
    for bound in JOB_DURATION_BUCKETS:
        if seconds <= bound:
            pipeline.hincrby(keys.job_stats, f"le:{bound}:{state}", 1)
