"""Helpers for tests of job submissions through the API: wait for a job's state, check a problem."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

PROBLEM = "application/problem+json"


def wait_for(
    client: TestClient, job_id: str, states: set[str], timeout_s: float = 180.0, predicate=None
) -> dict:
    """The job's status once it is in one of ``states`` (and ``predicate`` holds); fails after the timeout."""
    deadline = time.monotonic() + timeout_s
    body: dict = {}
    while time.monotonic() < deadline:
        body = client.get(f"/jobs/{job_id}").json()
        if body["state"] in states and (predicate is None or predicate(body)):
            return body
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not reach {states} in {timeout_s}s; last: {body}")


def assert_problem(resp, status: int, slug: str, field: str) -> dict:
    """An RFC 9457 problem of this status and type that names ``field``; its body."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    body = resp.json()
    assert body["type"] == f"/problems/{slug}" and body["field"] == field, body
    return body
