"""GET /jobs/{id}/preview: a running job's image as it forms. Real API, Redis and worker processes."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from redis import Redis

from app.main import create_app
from core.previews import Preview, read_preview, write_preview
from core.store import JobKeys
from tests.conftest import WorkerProcess, make_settings
from tests.test_jobs_api import PROBLEM, submit, wait_for
from worker.previews import PreviewWriter


def _preview(client, job_id: str):
    return client.get(f"/jobs/{job_id}/preview")


def test_a_running_gatys_job_shows_its_image_and_a_canceled_one_keeps_its_last(client, worker):
    running = submit(client, steps=2000, size=48)
    queued = submit(client, steps=5)
    assert running["links"]["preview"] == f"/jobs/{running['id']}/preview"
    assert running["progress"]["preview_step"] is None

    not_yet = _preview(client, queued["id"])
    assert not_yet.status_code == 409 and not_yet.headers["content-type"] == PROBLEM
    assert not_yet.json()["type"] == "/problems/no-preview"
    assert not_yet.json()["state"] == "queued" and not_yet.json()["field"] == "job_id"
    assert "not started" in not_yet.json()["detail"]
    client.delete(f"/jobs/{queued['id']}")

    # The first preview is stored after the first step, then every ATELIER_JOB_PREVIEW_INTERVAL_S.
    seen = wait_for(client, running["id"], {"started"}, predicate=lambda b: b["progress"]["preview_step"])
    answer = _preview(client, running["id"])
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/jpeg"
    assert answer.headers["cache-control"] == "no-store"
    step = int(answer.headers["x-atelier-preview-step"])
    assert seen["progress"]["preview_step"] <= step <= 2000
    image = Image.open(io.BytesIO(answer.content))
    assert image.format == "JPEG" and image.size == (48, 32)  # the job's size, the photo's aspect
    pixels = np.asarray(image, np.float32)
    assert pixels.std() > 5.0  # an image, not a blank

    later = wait_for(
        client, running["id"], {"started"}, predicate=lambda b: (b["progress"]["preview_step"] or 0) > step
    )
    assert later["progress"]["preview_step"] > step  # previews keep coming while it runs

    client.delete(f"/jobs/{running['id']}")
    ended = wait_for(client, running["id"], {"canceled", "failed", "finished"}, timeout_s=60)
    assert ended["state"] == "canceled"
    last = _preview(client, running["id"])
    assert last.status_code == 200  # what it had got to: a canceled job keeps its last preview
    assert int(last.headers["x-atelier-preview-step"]) == ended["progress"]["preview_step"]


def test_a_finished_job_has_its_result_and_no_preview(client, settings, worker):
    job = submit(client, steps=8, size=40)
    done = wait_for(client, job["id"], {"finished", "failed"})
    assert done["state"] == "finished" and done["progress"]["preview_step"] is None
    answer = _preview(client, job["id"])
    assert answer.status_code == 409 and answer.json()["state"] == "finished"
    assert "result" in answer.json()["detail"]
    key = JobKeys(settings.key_prefix).preview(job["id"])
    assert not Redis.from_url(settings.redis_url).exists(key)  # deleted with the result's write


def test_unknown_and_other_deployments_jobs_have_no_preview(client, settings):
    unknown = client.get("/jobs/00000000-0000-4000-8000-000000000000/preview")
    assert unknown.status_code == 404 and unknown.json()["field"] == "job_id"
    assert client.get("/jobs/not-a-uuid/preview").status_code == 404


def test_previews_off_means_none_are_stored(redis_url):
    settings = make_settings(redis_url, "no-previews", job_preview_interval_s=0)
    worker = WorkerProcess(settings, {"ATELIER_JOB_PREVIEW_INTERVAL_S": "0"})
    try:
        with TestClient(create_app(settings)) as client:
            job = submit(client, steps=2000, size=48)
            wait_for(client, job["id"], {"started"}, predicate=lambda b: b["progress"]["step"] >= 3)
            answer = _preview(client, job["id"])
            assert answer.status_code == 409 and answer.json()["state"] == "started"
            assert client.get(f"/jobs/{job['id']}").json()["progress"]["preview_step"] is None
            client.delete(f"/jobs/{job['id']}")
            wait_for(client, job["id"], {"canceled", "failed", "finished"}, timeout_s=60)
    finally:
        worker.stop()


def _grey(value: int) -> Image.Image:
    return Image.new("RGB", (24, 16), (value, value, value))


def test_preview_writer_stores_the_first_at_once_then_at_its_interval(settings):
    redis = Redis.from_url(settings.redis_url)
    key = f"{settings.key_prefix}preview-writer-test"
    writer = PreviewWriter(redis, key, interval_s=0.3, ttl_s=60)
    rendered: list[int] = []

    def render(value: int):
        def image() -> Image.Image:
            rendered.append(value)
            return _grey(value)

        return image

    assert writer.offer(1, render(10)) and writer.step == 1
    assert not writer.offer(2, render(20))  # not due: nothing rendered, nothing stored
    assert rendered == [10]
    time.sleep(0.35)
    assert writer.offer(3, render(200)) and writer.step == 3
    stored = read_preview(redis, key)
    assert stored is not None and stored.step == 3
    assert abs(np.asarray(Image.open(io.BytesIO(stored.jpeg)), np.float32).mean() - 200) < 2
    assert 0 < redis.ttl(key) <= 60
    assert not writer.offer(4, None)  # a job that offers no image
    redis.delete(key)


def test_preview_writer_goes_on_when_redis_is_gone(settings, caplog: pytest.LogCaptureFixture):
    dead = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    writer = PreviewWriter(dead, "atelier-test-nowhere", interval_s=1.0, ttl_s=60)
    assert not writer.offer(1, lambda: _grey(50))  # logged, not raised: the job must go on
    assert writer.step is None
    assert "preview of step 1 not stored" in caplog.text


def test_a_preview_is_read_whole_or_not_at_all(settings):
    redis = Redis.from_url(settings.redis_url)
    key = f"{settings.key_prefix}preview-read-test"
    assert read_preview(redis, key) is None
    write_preview(redis, key, Preview(7, b"\xff\xd8jpeg"), ttl_s=30)
    assert read_preview(redis, key) == Preview(7, b"\xff\xd8jpeg")
    redis.hdel(key, "image")  # never written so, but a half hash must not become a preview
    assert read_preview(redis, key) is None
    redis.delete(key)
