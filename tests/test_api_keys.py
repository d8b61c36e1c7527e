"""API keys against the real app, Redis and a worker: 401s, open endpoints, job ownership, SSE/WS keys."""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from app.auth import ApiKeys, Principal, digest_of
from app.main import create_app
from core.settings import Settings
from tests.conftest import make_settings
from tests.images import encode, photo_like, stripes
from tests.test_jobs_api import wait_for

ALPHA, BETA = "alpha-key-7Qm2", "beta-key-x9Lp"
PROBLEM = "application/problem+json"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def job_files() -> list[tuple[str, tuple[str, bytes, str]]]:
    return [
        ("content", ("photo.png", encode(photo_like()), "image/png")),
        ("style", ("style.png", encode(stripes()), "image/png")),
    ]


def submit(client: TestClient, key: str, steps: int = 4, size: int = 32) -> dict:
    resp = client.post(
        "/jobs/optimize",
        files=job_files(),
        data={"size": str(size), "steps": str(steps)},
        headers=bearer(key),
    )
    assert resp.status_code == 202, resp.text
    return resp.json()


@pytest.fixture(scope="module")
def keyed(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The app with two keys: ALPHA in the environment-style list, BETA only as a digest in a file."""
    keys_file = tmp_path_factory.mktemp("keys") / "keys.sha256"
    keys_file.write_text(f"# beta\n{digest_of(BETA)}\n\n")
    keyed_settings = make_settings(settings.redis_url, "main", api_keys=ALPHA, api_keys_file=keys_file)
    with TestClient(create_app(keyed_settings)) as client:  # the same queue as the session's worker
        yield client


def test_keys_from_list_and_digest_file_compare_by_digest(tmp_path: Path):
    keys_file = tmp_path / "k"
    keys_file.write_text(f"{digest_of('two')}  # a comment\n")
    keys = ApiKeys.from_settings(Settings(api_keys=" one , ", api_keys_file=keys_file))
    assert len(keys) == 2 and keys.enabled
    assert keys.check("one") == Principal(hashlib.sha256(b"one").hexdigest())
    assert keys.check("two") is not None
    assert keys.check("on") is None and keys.check("one ") is None and keys.check("") is None
    assert not ApiKeys.from_settings(Settings()).enabled
    keys_file.write_text("not-a-digest\n")
    with pytest.raises(ValueError, match="sha256"):
        ApiKeys.from_settings(Settings(api_keys_file=keys_file))
    assert "s3cr3t-Zq" not in repr(Settings(api_keys="s3cr3t-Zq"))  # a secret: never in a repr


def test_protected_endpoints_answer_401_problem_with_www_authenticate(keyed: TestClient):
    for method, path in [
        ("POST", "/classify"),
        ("POST", "/stylize"),
        ("GET", "/styles"),
        ("POST", "/jobs/optimize"),
        ("GET", f"/jobs/{uuid.uuid4()}"),
        ("DELETE", f"/jobs/{uuid.uuid4()}"),
        ("GET", f"/jobs/{uuid.uuid4()}/result"),
        ("GET", f"/jobs/{uuid.uuid4()}/events"),
    ]:
        for headers in ({}, bearer("wrong"), {"Authorization": ALPHA}, {"Authorization": f"Basic {ALPHA}"}):
            resp = keyed.request(method, path, headers=headers)
            assert resp.status_code == 401, (method, path, headers, resp.text)
            assert resp.headers["content-type"] == PROBLEM
            assert resp.headers["www-authenticate"] == 'Bearer realm="atelier"'
            assert resp.json()["type"] == "/problems/unauthorized"
    assert keyed.get("/styles", headers=bearer(ALPHA)).status_code == 200
    assert keyed.get("/styles", headers=bearer(BETA)).status_code == 200  # known only by its digest


def test_health_metrics_docs_and_page_stay_open(keyed: TestClient):
    for path in ("/healthz", "/metrics", "/openapi.json", "/docs", "/", "/static/js/api.js"):
        assert keyed.get(path).status_code == 200, path
    assert keyed.get("/readyz").status_code in (200, 503)  # open: its answer is about readiness


def test_jobs_belong_to_the_key_that_submitted_them(keyed: TestClient, worker):
    mine = submit(keyed, ALPHA)
    done = wait_for(_as(keyed, ALPHA), mine["id"], {"finished", "failed"})
    assert done["state"] == "finished", done
    job_path = f"/jobs/{mine['id']}"
    for method, path in [("GET", job_path), ("GET", f"{job_path}/result"), ("GET", f"{job_path}/events")]:
        other = keyed.request(method, path, headers=bearer(BETA))
        assert other.status_code == 404 and other.headers["content-type"] == PROBLEM, path
        assert other.json() == {**other.json(), "type": "/problems/not-found"}
    assert keyed.delete(job_path, headers=bearer(BETA)).status_code == 404
    assert keyed.get(f"{job_path}/result", headers=bearer(ALPHA)).content[:8] == b"\x89PNG\r\n\x1a\n"

    running = submit(keyed, ALPHA, steps=2000)
    assert keyed.delete(f"/jobs/{running['id']}", headers=bearer(BETA)).status_code == 404
    assert keyed.get(f"/jobs/{running['id']}", headers=bearer(ALPHA)).json()["state"] in ("queued", "started")
    assert keyed.delete(f"/jobs/{running['id']}", headers=bearer(ALPHA)).status_code == 200


def test_event_stream_takes_the_key_as_a_query_parameter(keyed: TestClient, worker):
    job = submit(keyed, ALPHA)
    wait_for(_as(keyed, ALPHA), job["id"], {"finished", "failed"})
    url = f"/jobs/{job['id']}/events"
    with keyed.stream("GET", url, params={"key": ALPHA}) as resp:  # what EventSource can do
        assert resp.status_code == 200
        assert "event: state" in resp.read().decode()
    assert keyed.get(url, params={"key": BETA}).status_code == 404  # a valid key, not its job
    assert keyed.get(url, params={"key": "wrong"}).status_code == 401


def _first_message_status(client: TestClient, path: str, **kwargs) -> tuple[dict, str | None]:
    with client.websocket_connect(path, **kwargs) as ws:
        message = ws.receive_json()
        protocol = ws.accepted_subprotocol
        if message["event"] == "error":
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
            message["close_code"] = closed.value.code
    return message, protocol


def test_live_websocket_needs_a_key_by_subprotocol_query_or_header(keyed: TestClient):
    refused, _ = _first_message_status(keyed, "/ws/stylize?style=x")
    assert refused["event"] == "error" and refused["problem"]["status"] == 401
    assert refused["close_code"] == 1008
    wrong, _ = _first_message_status(keyed, "/ws/stylize?style=x", subprotocols=["atelier", "bearer.wrong"])
    assert wrong["problem"]["status"] == 401
    # With a valid key the connection gets past the key check: the next answer is about the style.
    for kwargs, path in [
        ({"subprotocols": ["atelier", f"bearer.{ALPHA}"]}, "/ws/stylize?style=no-such-style"),
        ({}, f"/ws/stylize?style=no-such-style&key={BETA}"),
        ({"headers": bearer(ALPHA)}, "/ws/stylize?style=no-such-style"),
    ]:
        message, protocol = _first_message_status(keyed, path, **kwargs)
        assert message["event"] == "error" and message["problem"]["status"] in (422, 503), message
        assert protocol == ("atelier" if "subprotocols" in kwargs else None)


def test_metrics_name_keys_by_a_short_hash_and_logs_never_show_them(keyed, caplog):
    caplog.set_level(logging.DEBUG)
    keyed.get("/styles", headers=bearer(ALPHA))
    keyed.get("/styles", headers=bearer("a-wrong-key"))
    metrics = keyed.get("/metrics").text
    assert f'key="{digest_of(ALPHA)[:8]}"' in metrics and 'key="invalid"' in metrics
    for secret in (ALPHA, BETA, "a-wrong-key", digest_of(ALPHA)):
        assert secret not in metrics
        assert secret not in caplog.text


def test_openapi_declares_bearer_and_401_only_when_keys_are_on(keyed: TestClient, client: TestClient):
    doc = keyed.get("/openapi.json").json()
    scheme = doc["components"]["securitySchemes"]["ApiKey"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    classify = doc["paths"]["/classify"]["post"]
    assert classify["security"] == [{"ApiKey": []}]
    assert classify["responses"]["401"]["headers"]["WWW-Authenticate"]["required"] is True
    assert "security" not in doc["paths"]["/healthz"]["get"]
    events = doc["paths"]["/jobs/{job_id}/events"]["get"]
    assert "key" in [p["name"] for p in events["parameters"]]
    open_doc = client.get("/openapi.json").json()
    assert "securitySchemes" not in open_doc.get("components", {})
    assert "401" not in open_doc["paths"]["/classify"]["post"]["responses"]


class _as:
    """A view of the keyed client that sends one key on every GET (for wait_for)."""

    def __init__(self, client: TestClient, key: str) -> None:
        self.client, self.key = client, key

    def get(self, url: str, **kwargs):
        return self.client.get(url, headers=bearer(self.key), **kwargs)
