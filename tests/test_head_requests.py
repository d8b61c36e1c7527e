"""HEAD on every GET route (RFC 9110): the GET's status and headers, no body. The event stream test runs
against the API under real uvicorn, where a stream that never ended would hold the request."""

from __future__ import annotations

import time

import httpx
from fastapi.testclient import TestClient

from tests.test_api_keys import job_files


def test_head_answers_like_get_without_the_body(client: TestClient):
    for path in ("/healthz", "/styles", "/styles/starry_night/thumbnail", "/", "/openapi.json"):
        got = client.get(path)
        head = client.head(path)
        assert head.status_code == got.status_code == 200, path
        assert head.content == b"", path
        assert head.headers["content-type"] == got.headers["content-type"], path
        assert int(head.headers["content-length"]) == len(got.content), path


def test_head_of_a_missing_job_or_a_post_only_path_is_the_problem_a_get_gets(client: TestClient):
    missing = client.head("/jobs/00000000-0000-4000-8000-000000000000")
    assert missing.status_code == 404 and missing.content == b""
    post_only = client.head("/classify")
    assert post_only.status_code == 405 and "POST" in post_only.headers["allow"]


def test_head_of_an_event_stream_ends_at_once(live_server):
    base = live_server.url
    resp = httpx.post(f"{base}/jobs/optimize", files=job_files(), data={"size": "32", "steps": "2000"})
    assert resp.status_code == 202, resp.text
    job_url = f"{base}{resp.json()['links']['self']}"
    try:
        start = time.monotonic()
        head = httpx.head(f"{job_url}/events", timeout=10)
        assert head.status_code == 200 and head.headers["content-type"].startswith("text/event-stream")
        assert time.monotonic() - start < 5
    finally:
        httpx.delete(job_url, timeout=10)
