"""GET /jobs/{id}/preview: a running job's image as it stands (Gatys), newest frame (video) or a
held-out photo in the style being learned (POST /styles).

The worker stores it (:mod:`worker.previews`, :mod:`core.previews`); this serves the latest, with
the step it shows, or says in a 409 why there is none now.
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response
from rq.job import Job

from app.auth import CallerDep
from app.contract import problem_responses
from app.dependencies import KeysDep, QueueDep, RedisDep
from app.problems import Problem
from app.routers.jobs import fetch_job, job_state
from app.schemas import JobState
from core.previews import PREVIEW_MEDIA_TYPE, read_preview

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.get(
    "/{job_id:uuid}/preview",
    summary="The image of a running job as it stands",
    response_class=Response,
    responses={
        200: {
            "description": "The latest preview (JPEG) of a running job, or the last one of a job that was "
            "canceled or failed: a Gatys job's image as it stands, a video job's newest frame, a "
            "`POST /styles` job's held-out photo in the style as learned so far. A new one is stored "
            "every `ATELIER_JOB_PREVIEW_INTERVAL_S` while the job runs.",
            "content": {PREVIEW_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
            "headers": {
                "X-Atelier-Preview-Step": {
                    "description": "The step the preview shows (video: frames done).",
                    "required": True,
                    "schema": {"type": "integer", "minimum": 0},
                }
            },
        },
        **problem_responses(
            404,
            409,
            503,
            d409="No preview now: the job has not started or stored its first yet, or has finished (its "
            "result replaces the preview).",
        ),
    },
)
def get_preview(
    job_id: uuid.UUID, queue: QueueDep, redis: RedisDep, keys: KeysDep, caller: CallerDep
) -> Response:
    job = fetch_job(queue, job_id, caller)
    preview = read_preview(redis, keys.preview(job.id))
    if preview is None:
        state = job_state(job)
        raise Problem(409, "no-preview", _no_preview_detail(job, state), field="job_id", state=state)
    return Response(
        preview.jpeg,
        media_type=PREVIEW_MEDIA_TYPE,
        headers={
            "X-Atelier-Preview-Step": str(preview.step),
            "Cache-Control": "no-store",
            "Content-Disposition": f'inline; filename="{job_id}-preview-{preview.step}.jpg"',
        },
    )


def _no_preview_detail(job: Job, state: JobState) -> str:
    if state == "queued":
        return f"Job {job.id} has not started; its first preview comes after its first step."
    if state == "started":
        return f"Job {job.id} has not stored a preview yet; one comes after its first step."
    if state == "finished":
        return f"Job {job.id} has finished; download its result instead."
    return f"Job {job.id} ended ({state}) before its first preview."
