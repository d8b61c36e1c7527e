"""The Gatys job lifecycle end to end: real API, real Redis, real worker processes, real optimization."""

from __future__ import annotations

import io
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from redis import Redis

from app.main import create_app
from core.store import JobKeys
from tests.conftest import WorkerProcess, _purge, make_settings
from tests.images import encode, photo_like, stripes

PROBLEM = "application/problem+json"


def submit(client: TestClient, **fields) -> dict:
    files = [
        ("content", ("photo.png", encode(photo_like()), "image/png")),
        ("style", ("style.png", encode(stripes()), "image/png")),
    ]
    data = {"size": "48", "steps": "4", **{k: str(v) for k, v in fields.items()}}
    resp = client.post("/jobs/optimize", files=files, data=data)
    assert resp.status_code == 202, resp.text
    return resp.json() | {"location": resp.headers["location"]}


def wait_for(
    client: TestClient, job_id: str, states: set[str], timeout_s: float = 120.0, predicate=None
) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = client.get(f"/jobs/{job_id}").json()
        if body["state"] in states and (predicate is None or predicate(body)):
            return body
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not reach {states} in {timeout_s}s; last: {body}")


def test_job_runs_to_completion_with_progress_and_result(client, worker):
    job = submit(client, steps=6, size=56, seed=3)
    assert uuid.UUID(job["id"]).version == 4
    assert job["state"] == "queued"
    assert job["location"] == f"/jobs/{job['id']}"
    assert job["links"]["result"] == f"/jobs/{job['id']}/result"

    done = wait_for(client, job["id"], {"finished", "failed"})
    assert done["state"] == "finished", done
    assert done["progress"]["step"] == done["progress"]["total_steps"] == 6
    assert done["progress"]["percent"] == 100.0
    assert set(done["progress"]["losses"]) >= {"content", "style", "tv", "total"}
    assert done["started_at"] and done["ended_at"] and done["created_at"]
    assert done["result_url"] == job["links"]["result"]

    png = client.get(done["result_url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(png.content))
    assert max(img.size) == 56 and img.size == (56, 37)  # aspect of the 96x64 input kept
    jpeg = client.get(done["result_url"], params={"format": "jpeg"})
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(jpeg.content)).format == "JPEG"


def test_result_of_unfinished_job_is_409_and_queued_job_can_be_canceled(client, worker):
    running = submit(client, steps=2000, size=48)
    queued = submit(client, steps=5)
    assert client.get(f"/jobs/{queued['id']}/result").status_code == 409
    canceled = client.delete(f"/jobs/{queued['id']}")
    assert canceled.status_code == 200 and canceled.json()["state"] == "canceled"

    # The running job is stopped cooperatively at its next step and ends canceled, not failed.
    wait_for(client, running["id"], {"started"}, predicate=lambda b: b["progress"]["step"] >= 1)
    early = client.get(f"/jobs/{running['id']}/result")
    assert early.status_code == 409 and early.headers["content-type"] == PROBLEM
    assert client.delete(f"/jobs/{running['id']}").json()["cancel_requested"] is True
    ended = wait_for(client, running["id"], {"canceled", "failed", "finished"}, timeout_s=60)
    assert ended["state"] == "canceled"
    assert ended["progress"]["step"] < 2000
    again = client.delete(f"/jobs/{running['id']}")  # it has ended: now the DELETE deletes it
    assert again.status_code == 204 and again.content == b""
    assert client.get(f"/jobs/{running['id']}").status_code == 404


def test_deleting_an_ended_job_removes_everything_it_stored(client, settings, worker):
    redis = Redis.from_url(settings.redis_url)
    job = submit(client, steps=3, size=40)
    done = wait_for(client, job["id"], {"finished", "failed"})
    assert done["state"] == "finished"
    stored = redis.keys(f"{settings.key_prefix}job:{job['id']}:*")
    assert stored  # at least the result
    assert job["id"] in [j["id"] for j in client.get("/jobs", params={"limit": 100}).json()["jobs"]]

    assert client.delete(f"/jobs/{job['id']}").status_code == 204
    assert redis.keys(f"{settings.key_prefix}job:{job['id']}:*") == []  # photo, painting, result, ...
    assert not redis.exists(f"rq:job:{job['id']}")
    for path in ("", "/result", "/preview", "/events"):
        gone = client.get(f"/jobs/{job['id']}{path}")
        assert gone.status_code == 404 and gone.headers["content-type"] == PROBLEM, path
    assert job["id"] not in [j["id"] for j in client.get("/jobs", params={"limit": 100}).json()["jobs"]]
    assert client.delete(f"/jobs/{job['id']}").status_code == 404


def test_job_whose_input_expired_fails_with_a_readable_message(client, settings, worker):
    blocker = submit(client, steps=2000)
    doomed = submit(client, steps=3)
    Redis.from_url(settings.redis_url).delete(JobKeys(settings.key_prefix).content(doomed["id"]))
    client.delete(f"/jobs/{blocker['id']}")
    failed = wait_for(client, doomed["id"], {"failed", "finished"})
    assert failed["state"] == "failed"
    assert "expired" in failed["error"]
    assert client.get(f"/jobs/{doomed['id']}/result").status_code == 409


def test_killed_worker_leaves_job_failed_within_bounded_time(redis_url):
    settings = make_settings(redis_url, name="kill")
    with TestClient(create_app(settings)) as client:
        doomed_worker = WorkerProcess(settings)
        try:
            job = submit(client, steps=2000, size=48)
            wait_for(client, job["id"], {"started"}, predicate=lambda b: b["progress"]["step"] >= 1)
            horses = doomed_worker.children()
            assert horses, "the worker should be running the job in a forked work horse"
            doomed_worker.kill()
            killed_at = time.monotonic()
            bound = (
                settings.worker_monitor_interval_s + settings.heartbeat_grace_s + settings.reaper_interval_s
            )
            ended = wait_for(client, job["id"], {"failed", "finished", "canceled"}, timeout_s=bound + 15)
            assert ended["state"] == "failed"
            assert "stopped unexpectedly" in ended["error"]
            assert time.monotonic() - killed_at < bound + 15
            # The horse died with its parent: no orphan keeps computing a job already declared failed.
            for pid in horses:
                assert (
                    not Path(f"/proc/{pid}").exists()
                    or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
                )
        finally:
            doomed_worker.stop()


def test_unknown_and_malformed_job_ids(client):
    missing = client.get(f"/jobs/{uuid.uuid4()}")
    assert missing.status_code == 404 and missing.headers["content-type"] == PROBLEM
    assert missing.json()["field"] == "job_id"
    assert client.get(f"/jobs/{uuid.uuid4()}/result").status_code == 404
    assert client.delete(f"/jobs/{uuid.uuid4()}").status_code == 404
    malformed = client.get("/jobs/not-a-uuid")  # ids are UUIDs: any other names no resource
    assert malformed.status_code == 404 and malformed.headers["content-type"] == PROBLEM
    assert "UUID" in malformed.json()["detail"]  # says why, not just "Not Found"
    elsewhere = client.get("/no-such-path")
    assert elsewhere.status_code == 404 and "/docs" in elsewhere.json()["detail"]
    not_allowed = client.get("/jobs/optimize")  # that path exists, for POST only
    assert not_allowed.status_code == 405 and not_allowed.headers["allow"] == "POST"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"size": "100000"}, "size"),
        ({"size": "4"}, "size"),
        ({"steps": "0"}, "steps"),
        ({"steps": "999999"}, "steps"),
        ({"optimizer": "sgd"}, "optimizer"),
        ({"style_weight": "-1"}, "style_weight"),
        ({"content_layers": "relu9_9"}, "content_layers"),
        ({"style_layer_weights": "1,2"}, "style_layer_weights"),
        ({"style_layer_weights": "0,0,0,0,0"}, "style_layer_weights"),
        ({"style_layer_weights": "1,nan,1,1,1"}, "style_layer_weights"),
        ({"style_layer_weights": "1,inf,1,1,1"}, "style_layer_weights"),
        ({"style_layer_weights": "1,-1,1,1,1"}, "style_layer_weights"),
        ({"style_weight": "0"}, "style_weight"),
        ({"style_weight": "nan"}, "style_weight"),
        ({"content_weight": "inf"}, "content_weight"),
        ({"tv_weight": "nan"}, "tv_weight"),
        ({"style_blend_weights": "0.5,0.5"}, "style_blend_weights"),
        ({"colour": "blue"}, "colour"),
        ({"seed": "abc"}, "seed"),
    ],
)
def test_bad_options_are_422_naming_the_field(client, fields, field):
    files = [
        ("content", ("p.png", encode(photo_like()), "image/png")),
        ("style", ("s.png", encode(stripes()), "image/png")),
    ]
    resp = client.post("/jobs/optimize", files=files, data=fields)
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert resp.headers["content-type"] == PROBLEM
    assert body["status"] == 422 and body["field"] == field and field in body["detail"]
    assert body["type"].startswith("/problems/") and body["title"]


def test_bad_uploads_get_precise_errors(client):
    style = ("style", ("s.png", encode(stripes()), "image/png"))
    cases = [
        ([("content", ("x.txt", b"hello, not an image", "text/plain")), style], 415),
        ([("content", ("empty.png", b"", "image/png")), style], 422),
        ([("content", ("cut.png", encode(photo_like())[:200], "image/png")), style], 422),
        ([style], 422),  # content missing
    ]
    for files, status in cases:
        resp = client.post("/jobs/optimize", files=files, data={"steps": "2"})
        assert resp.status_code == status, (files[0][1][0], resp.text)
        assert resp.headers["content-type"] == PROBLEM
        assert resp.json()["field"] in ("content", "style")


def test_too_many_pixels_and_too_many_bytes(redis_url):
    small = make_settings(
        redis_url, name="limits", max_image_pixels=50 * 50, max_upload_bytes=30_000, max_request_bytes=200_000
    )
    with TestClient(create_app(small)) as client:
        style = ("style", ("s.png", encode(stripes(32, 32)), "image/png"))
        bomb = client.post(
            "/jobs/optimize", files=[("content", ("big.png", encode(photo_like(80, 80)), "image/png")), style]
        )
        assert bomb.status_code == 413 and bomb.json()["field"] == "content"
        noise = Image.effect_noise((200, 200), 100).convert("RGB")
        heavy = client.post(
            "/jobs/optimize", files=[("content", ("n.png", encode(noise), "image/png")), style]
        )
        assert heavy.status_code == 413 and heavy.json()["field"] == "content"
        huge_body = client.post(
            "/jobs/optimize",
            content=b"x" * 300_000,
            headers={"content-type": "multipart/form-data; boundary=zzz"},
        )
        assert huge_body.status_code == 413 and huge_body.headers["content-type"] == PROBLEM


def test_redis_down_gives_503_and_readyz_says_why(redis_url):
    dead = make_settings("redis://127.0.0.1:1/0", name="dead", redis_timeout_s=0.5)
    with TestClient(create_app(dead)) as client:
        started = time.monotonic()
        files = [
            ("content", ("p.png", encode(photo_like()), "image/png")),
            ("style", ("s.png", encode(stripes()), "image/png")),
        ]
        submitted = client.post("/jobs/optimize", files=files)
        assert submitted.status_code == 503 and submitted.headers["content-type"] == PROBLEM
        assert "Redis" in submitted.json()["detail"]
        assert client.get(f"/jobs/{uuid.uuid4()}").status_code == 503
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "unreachable" in ready.json()["checks"]["redis"]["error"]
        assert client.get("/healthz").status_code == 200
        assert time.monotonic() - started < 10


def test_metrics_and_readiness(client, worker):
    client.get("/healthz")
    ready = client.get("/readyz").json()
    assert ready["checks"]["redis"]["ok"] is True and ready["checks"]["workers"]["alive"] >= 1
    text = client.get("/metrics").text
    assert "atelier_workers_alive" in text
    assert 'atelier_http_requests_total{key="none",method="GET",route="/healthz",status="200"}' in text
    assert "atelier_queue_depth" in text
    assert "atelier_job_duration_seconds" in text


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_service_recovers_by_itself_when_redis_comes_back(redis_url):
    import shutil
    import subprocess

    server = shutil.which("redis-server")
    assert server, "redis-server is needed to restart a Redis during the test"
    port = _free_port()
    cmd = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        for _ in range(100):
            try:
                if Redis(port=port, socket_connect_timeout=0.2).ping():
                    return proc
            except Exception:
                time.sleep(0.05)
        raise RuntimeError("temporary redis-server did not start")

    proc = start()
    settings = make_settings(f"redis://127.0.0.1:{port}/0", name="flaky", redis_timeout_s=0.5)
    try:
        with TestClient(create_app(settings)) as client:
            assert submit(client)["state"] == "queued"
            proc.terminate()
            proc.wait(timeout=10)
            files = [
                ("content", ("p.png", encode(photo_like()), "image/png")),
                ("style", ("s.png", encode(stripes()), "image/png")),
            ]
            assert client.post("/jobs/optimize", files=files).status_code == 503
            assert client.get("/readyz").status_code == 503
            proc = start()
            assert submit(client)["state"] == "queued"
            # Redis is back; readiness still says 503 only because no worker serves this queue.
            ready = client.get("/readyz").json()["checks"]
            assert ready["redis"]["ok"] is True and ready["workers"]["alive"] == 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_job_over_its_time_limit_fails_and_worker_survives(redis_url):
    settings = make_settings(redis_url, name="timeout", job_timeout_s=3)
    with TestClient(create_app(settings)) as client:
        slow_worker = WorkerProcess(settings)
        try:
            slow = submit(client, steps=2000, size=48)
            ended = wait_for(client, slow["id"], {"failed", "finished", "canceled"}, timeout_s=60)
            assert ended["state"] == "failed" and "time limit of 3 s" in ended["error"]
            assert ended["started_at"] and ended["progress"]["step"] < 2000
            assert slow_worker.proc.poll() is None  # the worker survives its horse's timeout
        finally:
            slow_worker.stop()


def test_zero_style_layer_weight_finishes_with_finite_losses_and_a_real_image(client, worker):
    """The bf16 Gram backward once turned a zero layer weight into NaN and a black 'finished' image."""
    job = submit(client, steps=8, size=56, style_layer_weights="1,1,0,1,1", content_weight=0)
    done = wait_for(client, job["id"], {"finished", "failed"})
    assert done["state"] == "finished", done
    losses = done["progress"]["losses"]
    assert all(isinstance(v, float) for v in losses.values()), losses  # NaN would be JSON null
    img = Image.open(io.BytesIO(client.get(done["result_url"]).content)).convert("L")
    assert 40 < float(np.asarray(img).mean()) < 230  # neither black nor blank


def test_a_queued_job_says_how_many_start_before_it(redis_url):
    settings = make_settings(redis_url, "jobs-ahead")  # no worker: the jobs wait in line
    try:
        with TestClient(create_app(settings)) as client:
            first, second, third = (submit(client) for _ in range(3))
            assert [job["jobs_ahead"] for job in (first, second, third)] == [0, 1, 2]
            assert first["estimated_end_at"] is None
            client.delete(f"/jobs/{first['id']}")
            assert client.get(f"/jobs/{third['id']}").json()["jobs_ahead"] == 1
            assert client.get(f"/jobs/{first['id']}").json()["jobs_ahead"] is None  # canceled
    finally:
        _purge(settings)


def test_a_running_job_estimates_its_end_from_its_pace(client, worker):
    job = submit(client, steps=400, size=64)
    running = wait_for(client, job["id"], {"started"}, predicate=lambda b: 5 <= b["progress"]["percent"] < 90)
    client.delete(f"/jobs/{job['id']}")
    started = datetime.fromisoformat(running["started_at"])
    end = datetime.fromisoformat(running["estimated_end_at"])
    elapsed_at_report = (end - started).total_seconds() * running["progress"]["percent"] / 100
    assert end > datetime.now(UTC) - timedelta(seconds=5) and running["jobs_ahead"] is None
    assert 0 < elapsed_at_report < 120  # the pace implied is that of this job: a few seconds in
