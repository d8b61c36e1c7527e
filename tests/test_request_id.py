"""X-Request-ID: every answer carries one, problems quote it, and the API's log lines have it."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from app.cli import APP_LOG_FORMAT
from app.main import create_app
from app.request_id import RequestIdLogFilter, RequestIdMiddleware
from core.settings import Settings
from tests.browser import PROJECT_ROOT, SHARED_SETTINGS, free_port
from tests.conftest import _purge, make_settings

HEX_ID = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(scope="module")
def small_settings(redis_url: str) -> Iterator[Settings]:
    s = make_settings(redis_url, "request-id", max_request_bytes=4096)
    yield s
    _purge(s)


@pytest.fixture(scope="module")
def client(small_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(small_settings)) as c:
        yield c


def test_every_answer_carries_a_fresh_id(client):
    first, second = client.get("/healthz"), client.get("/healthz")
    assert HEX_ID.fullmatch(first.headers["x-request-id"])
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


@pytest.mark.parametrize(
    ("sent", "kept"),
    [("trace-4bf92f3577b3:00f067aa.0ba902b7", True), ("has space", False), ("x" * 129, False)],
)
def test_a_client_id_is_kept_when_it_looks_like_one(client, sent, kept):
    got = client.get("/healthz", headers={"X-Request-ID": sent}).headers["x-request-id"]
    assert (got == sent) is kept
    assert kept or HEX_ID.fullmatch(got)


def test_a_problem_quotes_the_id(client):
    r = client.get(f"/jobs/{uuid.uuid4()}", headers={"X-Request-ID": "report-me-1"})
    assert r.status_code == 404 and r.json()["request_id"] == r.headers["x-request-id"] == "report-me-1"


def test_even_the_body_limit_answers_with_an_id(client):
    """The outermost layer: a 413 sent before the app reads the body has the id too."""
    r = client.post("/classify", content=b"x" * 10_000, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 413 and r.json()["request_id"] == r.headers["x-request-id"]


def test_a_queued_job_is_logged_with_the_request_s_id(client, caplog):
    """The line that links a user's request id to the job id the worker logs under."""
    from tests.images import encode, photo_like, stripes

    files = [
        ("content", ("p.png", encode(photo_like(16, 16)), "image/png")),
        ("style", ("s.png", encode(stripes(16, 16)), "image/png")),
    ]
    caplog.handler.addFilter(RequestIdLogFilter())  # as the handlers of `atelier api` have it
    with caplog.at_level(logging.INFO, logger="app.job_admission"):
        r = client.post(
            "/jobs/optimize",
            files=files,
            data={"size": "16", "steps": "1"},
            headers={"X-Request-ID": "rq-77"},
        )
    assert r.status_code == 202, r.text
    lines = [rec for rec in caplog.records if r.json()["id"] in rec.getMessage()]
    assert [rec.request_id for rec in lines] == ["rq-77"]


def test_log_lines_inside_a_request_name_it():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdLogFilter())
    handler.setFormatter(logging.Formatter(APP_LOG_FORMAT))
    log = logging.getLogger("tests.request_id")
    log.addHandler(handler)
    log.setLevel(logging.INFO)

    def endpoint(request):
        log.info("inside")
        return PlainTextResponse("ok")

    app = RequestIdMiddleware(Starlette(routes=[Route("/", endpoint)]))
    try:
        with TestClient(app) as c:
            c.get("/", headers={"X-Request-ID": "abc-123"})
        log.info("outside")
    finally:
        log.removeHandler(handler)
    inside, outside = stream.getvalue().splitlines()
    assert "[abc-123]: inside" in inside and "[-]: outside" in outside


def test_atelier_api_writes_the_id_on_its_access_lines(small_settings, tmp_path):
    """The real command: `atelier api` under uvicorn, its log configuration and access log."""
    port = free_port()
    env = os.environ | {f"ATELIER_{n.upper()}": str(getattr(small_settings, n)) for n in SHARED_SETTINGS}
    log_path = tmp_path / "api.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "api", "--host", "127.0.0.1", "--port", str(port)],
            cwd=PROJECT_ROOT, env=env | {"ATELIER_TORCH_THREADS": "1"},
            stdout=log_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    r = httpx.get(
                        f"http://127.0.0.1:{port}/healthz", headers={"X-Request-ID": "from-curl-42"}
                    )
                    break
                except httpx.HTTPError:
                    assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-2000:]
                    time.sleep(0.3)
            assert r.headers["x-request-id"] == "from-curl-42"
            time.sleep(0.5)  # the access line is written as the answer goes out
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    lines = log_path.read_text().splitlines()
    assert any('"GET /healthz HTTP/1.1" 200 OK [from-curl-42]' in line for line in lines), lines[-10:]
