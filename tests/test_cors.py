"""Cross-origin access: off by default; with ATELIER_CORS_ORIGINS, those origins' pages may call the API
and read the headers that matter (real API and Redis)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import _purge, make_settings
from tests.test_api_keys import job_files

APP = "https://app.example.com"


@pytest.fixture(scope="module")
def cross_origin(redis_url: str) -> Iterator[TestClient]:
    settings = make_settings(redis_url, "cors", cors_origins=f"{APP}/, https://other.example.org")
    with TestClient(create_app(settings)) as client:
        yield client
    _purge(settings)


def test_an_allowed_origin_passes_the_preflight_of_a_job_submission(cross_origin: TestClient):
    resp = cross_origin.options(
        "/jobs/optimize",
        headers={
            "Origin": APP,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, idempotency-key, prefer",
        },
    )
    assert resp.status_code == 200 and resp.headers["access-control-allow-origin"] == APP
    assert "POST" in resp.headers["access-control-allow-methods"]
    allowed = resp.headers["access-control-allow-headers"].lower()
    assert {"authorization", "idempotency-key", "prefer"} <= {h.strip() for h in allowed.split(",")}


def test_an_allowed_origin_reads_the_answer_and_its_location(cross_origin: TestClient):
    resp = cross_origin.post(
        "/jobs/optimize", files=job_files(), data={"size": "32"}, headers={"Origin": APP}
    )
    assert resp.status_code == 202 and resp.headers["access-control-allow-origin"] == APP
    exposed = {h.strip().lower() for h in resp.headers["access-control-expose-headers"].split(",")}
    assert {"location", "retry-after", "x-request-id", "x-atelier-model"} <= exposed
    problem = cross_origin.post("/jobs/optimize", data={"size": "32"}, headers={"Origin": APP})
    assert problem.status_code == 422 and problem.headers["access-control-allow-origin"] == APP
    cross_origin.delete(resp.headers["location"])


def test_another_origin_gets_no_access(cross_origin: TestClient):
    resp = cross_origin.get("/healthz", headers={"Origin": "https://evil.example.net"})
    assert resp.status_code == 200 and "access-control-allow-origin" not in resp.headers
    preflight = cross_origin.options(
        "/stylize", headers={"Origin": "https://evil.example.net", "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status_code == 400


def test_without_configured_origins_no_cors_headers_are_sent(client: TestClient):
    resp = client.get("/healthz", headers={"Origin": APP})
    assert "access-control-allow-origin" not in resp.headers
