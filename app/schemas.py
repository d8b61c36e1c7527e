"""Response bodies of the job API (what clients can rely on)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

JobState = Literal["queued", "started", "finished", "failed", "canceled"]
TERMINAL_STATES: frozenset[str] = frozenset({"finished", "failed", "canceled"})  # a job ends in one
JobKind = Literal["optimize", "stylize-image", "stylize-video", "train-style"]


class JobLinks(BaseModel):
    self: str = Field(examples=["/jobs/3f0c6f2e-6f55-4a8e-9a7e-0b7f2c9e1d11"])
    result: str = Field(examples=["/jobs/3f0c6f2e-6f55-4a8e-9a7e-0b7f2c9e1d11/result"])
    preview: str = Field(
        examples=["/jobs/3f0c6f2e-6f55-4a8e-9a7e-0b7f2c9e1d11/preview"],
        description="The image as it stands while the job runs (once `progress.preview_step` is set).",
    )


class JobProgress(BaseModel):
    step: int = 0
    total_steps: int
    percent: float = 0.0
    losses: dict[str, float] = Field(
        default_factory=dict, examples=[{"content": 1.2, "style": 3.4, "tv": 0.1}]
    )
    frames: int | None = Field(None, description="Video jobs: frames stylized so far (also in `step`).")
    total_frames: int | None = Field(None, description="Video jobs: frames the output will have.")
    frames_per_s: float | None = Field(None, description="Video jobs: frames stylized per second so far.")
    preview_step: int | None = Field(
        None,
        description="The step (video: frames done) shown by the latest preview at `links.preview`; "
        "null until the first is stored, and once the job has finished (its result replaces it).",
    )


class WebhookDelivery(BaseModel):
    """How the job's webhook (its submitter's `webhook_url`) is going."""

    state: Literal["pending", "delivered", "failed"] = Field(
        description="`pending`: the job has not ended, or a delivery is still being tried; `delivered`: "
        "the URL answered 2xx; `failed`: every attempt failed (ATELIER_WEBHOOK_RETRY_DELAYS_S), or the "
        "host no longer resolves to an address webhooks may go to."
    )
    attempts: int = Field(0, description="Deliveries tried so far.")
    last_attempt_at: datetime | None = None
    next_attempt_at: datetime | None = Field(None, description="When a failed delivery is tried again.")
    last_error: str | None = Field(
        None, description="Why the last attempt failed: `HTTP 503`, `timed out`, ...", examples=["HTTP 503"]
    )


class JobStatus(BaseModel):
    id: str
    kind: JobKind | None = Field(
        None,
        description="What the job does: `optimize` (POST /jobs/optimize), `stylize-image` "
        "(POST /jobs/stylize-image), `stylize-video` (POST /jobs/stylize-video) or `train-style` "
        "(POST /styles).",
    )
    state: JobState
    progress: JobProgress
    created_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    error: str | None = None
    cancel_requested: bool = False
    options: dict[str, object] = Field(default_factory=dict)
    links: JobLinks
    result_url: str | None = Field(None, description="Set once the job has finished.")
    jobs_ahead: int | None = Field(
        None, description="Queued jobs: how many jobs of the queue start before this one (0: it is next)."
    )
    estimated_end_at: datetime | None = Field(
        None,
        description="Running jobs: when the job should end if it keeps its pace so far (null before its "
        "first progress report).",
    )
    webhook: WebhookDelivery | None = Field(
        None, description="Set when the job was submitted with a `webhook_url`: how its delivery goes."
    )
    result_info: dict[str, object] | None = Field(
        None,
        description="What a finished job reports. Video: frames, size, frames/s, codec, what happened "
        "to each audio track, colour (sdr; hlg or pq: tone-mapped HDR; bt2020 or p3: converted "
        "primaries) and flicker (input, raw network, output). Train-style: the style's name, "
        "iterations, final losses, seconds, style_weight_scale, bf16, device and network sha256.",
    )


class JobList(BaseModel):
    """A page of the caller's jobs, newest first."""

    jobs: list[JobStatus]
    next: str | None = Field(
        None,
        description="The next page (older jobs), with the same filters; null on the last page. A page "
        "may hold fewer jobs than `limit` and still have a next one.",
        examples=["/jobs?limit=20&cursor=1796640000000-3f0c6f2e-6f55-4a8e-9a7e-0b7f2c9e1d11"],
    )


class JobEndedMessage(BaseModel):
    """What a job's webhook receives once the job ends (a Standard Webhooks message)."""

    type: Literal["job.finished", "job.failed", "job.canceled"] = Field(description="`job.<state>`.")
    timestamp: datetime = Field(description="When this message was made (each attempt makes it anew).")
    data: JobStatus = Field(
        description="The job's final status: the body of GET /jobs/{id}, without `webhook`."
    )
