"""``Prefer: wait=N``: job requests held until the job ends. Real API, Redis and (where a job must
finish) a real worker."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.job_wait import requested_wait
from app.main import create_app
from core.settings import Settings
from tests.conftest import WorkerProcess, _purge, make_settings
from tests.test_api_keys import job_files


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("wait=5", 5.0),
        ("respond-async, wait=10", 10.0),
        ("WAIT = 2.5", 2.5),
        ('wait="7"', 7.0),
        ("wait=0", 0.0),
        ("wait=3; foo=bar", 3.0),
        ("wait=soon", None),
        ("wait=-1", None),
        ("wait=inf", None),
        ("handling=lenient", None),
        ("", None),
    ],
)
def test_the_wait_preference_is_read_as_rfc_7240_writes_it(header: str, seconds: float | None):
    assert requested_wait(header) == seconds


@pytest.fixture()
def api(redis_url: str, request: pytest.FixtureRequest) -> Iterator[tuple[TestClient, Settings]]:
    """A deployment of its own with no worker: its jobs stay queued unless canceled."""
    settings = make_settings(redis_url, f"wait-{request.node.name[-40:]}", job_wait_max_s=3)
    with TestClient(create_app(settings)) as client:
        yield client, settings
    _purge(settings)


def queue_job(client: TestClient) -> str:
    resp = client.post("/jobs/optimize", files=job_files(), data={"size": "32", "steps": "2"})
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def test_a_job_that_does_not_end_is_answered_when_the_wait_is_over(api):
    client, _ = api
    job_id = queue_job(client)
    start = time.monotonic()
    resp = client.get(f"/jobs/{job_id}", headers={"Prefer": "wait=1"})
    waited = time.monotonic() - start
    assert resp.status_code == 200 and resp.json()["state"] == "queued"
    assert resp.headers["Preference-Applied"] == "wait=1" and resp.headers["Vary"] == "Prefer"
    assert 0.9 <= waited < 5


def test_the_wait_is_capped_by_the_server(api):
    client, _ = api
    job_id = queue_job(client)
    start = time.monotonic()
    resp = client.get(f"/jobs/{job_id}/result", headers={"Prefer": "wait=3600"})
    assert time.monotonic() - start < 8
    assert resp.status_code == 409 and resp.json()["state"] == "queued"
    assert resp.headers["Preference-Applied"] == "wait=3"  # ATELIER_JOB_WAIT_MAX_S of this deployment


def test_a_wait_ends_as_soon_as_the_job_does(redis_url: str):
    settings = make_settings(redis_url, "wait-ends", job_wait_max_s=20)
    try:
        with TestClient(create_app(settings)) as client:
            job_id = queue_job(client)
            answers: list = []
            waiter = threading.Thread(
                target=lambda: answers.append(
                    client.get(f"/jobs/{job_id}/result", headers={"Prefer": "wait=20"})
                )
            )
            start = time.monotonic()
            waiter.start()
            time.sleep(0.5)
            assert client.delete(f"/jobs/{job_id}").json()["state"] == "canceled"
            waiter.join(timeout=30)
            (resp,) = answers
            assert time.monotonic() - start < 10  # long before the 20 s wait is over
            assert resp.status_code == 409 and resp.json()["state"] == "canceled"
    finally:
        _purge(settings)


def test_without_an_understood_preference_nothing_waits(api):
    client, _ = api
    job_id = queue_job(client)
    for prefer in ("wait=later", "respond-async"):
        start = time.monotonic()
        resp = client.get(f"/jobs/{job_id}", headers={"Prefer": prefer})
        assert resp.status_code == 200 and time.monotonic() - start < 1
        assert "Preference-Applied" not in resp.headers
    missing = client.get(f"/jobs/{uuid.uuid4()}", headers={"Prefer": "wait=3"})
    assert missing.status_code == 404


def test_a_short_job_is_one_request_to_submit_and_one_to_download(redis_url: str):
    settings = make_settings(redis_url, "wait-worker")
    worker = WorkerProcess(settings)
    try:
        with TestClient(create_app(settings)) as client:
            resp = client.post(
                "/jobs/optimize",
                files=job_files(),
                data={"size": "32", "steps": "2"},
                headers={"Prefer": "wait=60"},
            )
            assert resp.status_code == 202 and resp.headers["Preference-Applied"] == "wait=60"
            status = resp.json()
            assert status["state"] == "finished", status
            assert resp.headers["Location"] == status["links"]["self"]
            image = client.get(status["result_url"], headers={"Prefer": "wait=60"})
            assert image.status_code == 200 and image.headers["content-type"] == "image/png"
            assert image.headers["Preference-Applied"] == "wait=60"
    finally:
        worker.stop()
        _purge(settings)


def test_waits_beyond_the_process_limit_are_not_granted(redis_url: str):
    settings = make_settings(redis_url, "wait-slots", job_waiters_max=1, job_wait_max_s=2)
    try:
        with TestClient(create_app(settings)) as client:
            job_id = queue_job(client)
            answers: list = []
            first = threading.Thread(
                target=lambda: answers.append(client.get(f"/jobs/{job_id}", headers={"Prefer": "wait=2"}))
            )
            first.start()
            time.sleep(0.5)  # the first one holds the only slot
            start = time.monotonic()
            second = client.get(f"/jobs/{job_id}", headers={"Prefer": "wait=2"})
            assert time.monotonic() - start < 1 and "Preference-Applied" not in second.headers
            first.join(timeout=10)
            assert answers[0].headers["Preference-Applied"] == "wait=2"
            third = client.get(f"/jobs/{job_id}", headers={"Prefer": "wait=0.2"})  # the slot is free again
            assert third.headers["Preference-Applied"] == "wait=0.2"
    finally:
        _purge(settings)
