"""Idempotency-Key on job submissions, against the real Redis: a retry gets the first job, not a new one."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq import Queue

from app.main import create_app
from core.settings import Settings
from tests.conftest import _purge, make_settings
from tests.images import encode, photo_like, stripes

KEYS = ("alice-key-0123456789", "bob-key-9876543210")


@pytest.fixture(scope="module")
def idem_settings(redis_url: str) -> Iterator[Settings]:
    s = make_settings(redis_url, "idempotency", api_keys=",".join(KEYS))
    yield s
    _purge(s)


@pytest.fixture(scope="module")
def client(idem_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(idem_settings)) as c:
        yield c


def queued(settings: Settings) -> int:
    return Queue(settings.queue_name, connection=Redis.from_url(settings.redis_url)).count


def optimize(
    client: TestClient, key: str | None, api_key: str = KEYS[0], steps: int = 4, name: str = "p.png"
):
    headers = {"Authorization": f"Bearer {api_key}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    files = [
        ("content", (name, encode(photo_like()), "image/png")),
        ("style", ("s.png", encode(stripes()), "image/png")),
    ]
    return client.post(
        "/jobs/optimize", files=files, data={"size": "48", "steps": str(steps)}, headers=headers
    )


def test_a_repeat_gets_the_first_job_and_queues_nothing(client, idem_settings):
    key = str(uuid.uuid4())
    before = queued(idem_settings)
    first = optimize(client, key)
    assert first.status_code == 202, first.text
    assert "Idempotent-Replayed" not in first.headers
    # A retry is a new multipart body (new boundary) and may name the file differently: the same request.
    again = optimize(client, key, name="retry.png")
    assert again.status_code == 202, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"
    assert queued(idem_settings) == before + 1


def test_a_key_whose_job_was_deleted_queues_anew(client, idem_settings):
    """DELETE /jobs/{id} removed the job its first request queued: a repeat has nothing to replay."""
    key = str(uuid.uuid4())
    auth = {"Authorization": f"Bearer {KEYS[0]}"}
    first = optimize(client, key).json()["id"]
    assert client.delete(f"/jobs/{first}", headers=auth).json()["state"] == "canceled"  # queued: at once
    assert client.delete(f"/jobs/{first}", headers=auth).status_code == 204  # ended: deleted
    again = optimize(client, key)
    assert again.status_code == 202, again.text
    assert again.json()["id"] != first and "Idempotent-Replayed" not in again.headers
    replay = optimize(client, key)  # and the key is bound to the new job
    assert replay.json()["id"] == again.json()["id"] and replay.headers["idempotent-replayed"] == "true"
    client.delete(f"/jobs/{again.json()['id']}", headers=auth)


def test_without_a_key_every_post_is_a_new_job(client, idem_settings):
    before = queued(idem_settings)
    assert optimize(client, None).json()["id"] != optimize(client, None).json()["id"]
    assert queued(idem_settings) == before + 2


def test_the_same_key_for_a_different_request_is_refused(client):
    key = str(uuid.uuid4())
    assert optimize(client, key, steps=4).status_code == 202
    other = optimize(client, key, steps=5)
    assert other.status_code == 422 and other.headers["content-type"] == "application/problem+json"
    body = other.json()
    assert body["field"] == "Idempotency-Key" and "different request" in body["detail"]


def test_keys_are_per_caller(client):
    key = str(uuid.uuid4())
    alice, bob = optimize(client, key, KEYS[0]), optimize(client, key, KEYS[1])
    assert alice.status_code == bob.status_code == 202
    assert alice.json()["id"] != bob.json()["id"]


def test_a_failed_first_request_frees_its_key(client, idem_settings):
    key = str(uuid.uuid4())
    bad = optimize(client, key, steps=0)  # 422: steps must be >= 1
    assert bad.status_code == 422 and bad.json()["field"] == "steps"
    fixed = optimize(client, key, steps=4)
    assert fixed.status_code == 202, fixed.text
    assert "Idempotent-Replayed" not in fixed.headers


def test_a_repeat_while_the_first_is_handled_is_409(client, idem_settings):
    """Two requests at once with one key: the second is told to retry, not given a second job."""
    key = str(uuid.uuid4())
    caller = hashlib.sha256(KEYS[0].encode()).hexdigest()
    scope = hashlib.sha256(f"{caller}\0/jobs/optimize\0{key}".encode()).hexdigest()
    redis = Redis.from_url(idem_settings.redis_url)
    first = optimize(client, key)  # learn this request's fingerprint from what it stored
    stored = json.loads(redis.get(f"{idem_settings.key_prefix}idempotency:{scope}"))
    assert stored["job_id"] == first.json()["id"]
    pending = json.dumps({"fingerprint": stored["fingerprint"], "token": "another-request"})
    redis.set(f"{idem_settings.key_prefix}idempotency:{scope}", pending, ex=60)
    busy = optimize(client, key)
    assert busy.status_code == 409 and busy.json()["field"] == "Idempotency-Key"
    assert busy.headers["retry-after"]


@pytest.mark.parametrize("value", ["", "x" * 256, "has space", "tab\tinside"])
def test_a_malformed_key_is_a_problem_naming_the_header(client, value):
    r = optimize(client, value)
    assert r.status_code == 422, r.text
    assert r.json()["field"].lower() == "idempotency-key"


def test_the_key_works_on_every_job_route(client, idem_settings):
    from tests.videos import make_clip

    key = str(uuid.uuid4())
    headers = {"Authorization": f"Bearer {KEYS[0]}", "Idempotency-Key": key}
    clip = make_clip(frames=4, width=32, height=24, fps=4, audio=False)

    def video():
        files = {"file": ("c.mp4", clip, "video/mp4")}
        return client.post(
            "/jobs/stylize-video", files=files, data={"style": "starry_night"}, headers=headers
        )

    first, again = video(), video()
    if first.status_code == 503:  # no style network loaded in this checkout: nothing to replay
        pytest.skip(first.json()["detail"])
    assert first.status_code == again.status_code == 202, first.text
    assert first.json()["id"] == again.json()["id"] and again.headers["idempotent-replayed"] == "true"
