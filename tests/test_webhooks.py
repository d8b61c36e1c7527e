"""Job webhooks: the real API and Redis, a real worker, and a real HTTP receiver on this machine.

Each deployment allows private addresses (the receiver is on 127.0.0.1) except where the refusal of
them is the point; the receiver is addressed as ``localhost``, so the delivery goes through name
resolution, the pinned address and the Host header as it would to a public host.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from standardwebhooks.webhooks import Webhook

from app.main import create_app
from app.schemas import JobEndedMessage
from app.webhook_targets import UnsafeTarget, allowed, checked_addresses, parse_target
from core.settings import Settings
from core.store import JobKeys
from tests.conftest import WorkerProcess, _purge, make_settings
from tests.test_api_keys import job_files
from tests.videos import make_clip

PROBLEM = "application/problem+json"
SECRET_KEY = b"atelier-test-webhook-key-32bytes"
SECRET = "whsec_" + base64.b64encode(SECRET_KEY).decode()


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def message(self) -> dict:
        return json.loads(self.body)


class Receiver:
    """An HTTP endpoint on 127.0.0.1 that records every POST and answers with the next status of
    ``statuses`` (the last one repeats)."""

    def __init__(self, statuses: tuple[int, ...] = (200,)) -> None:
        self.received: list[Received] = []
        self._statuses = list(statuses)
        self._arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._arrived:
                    receiver.received.append(Received(self.path, dict(self.headers.items()), body))
                    status = (
                        receiver._statuses.pop(0) if len(receiver._statuses) > 1 else receiver._statuses[0]
                    )
                    receiver._arrived.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def url(self, path: str = "/hooks/atelier?token=abc") -> str:
        return f"http://localhost:{self._server.server_port}{path}"

    def wait_for(self, count: int, timeout_s: float = 60) -> list[Received]:
        with self._arrived:
            assert self._arrived.wait_for(lambda: len(self.received) >= count, timeout_s), (
                f"{len(self.received)} of {count} webhook deliveries arrived"
            )
            return list(self.received)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def deployment(redis_url: str, name: str, **overrides) -> Settings:
    options = {
        "webhook_allow_private": True,
        "webhook_secret": SECRET,
        "webhook_poll_interval_s": 0.1,
        "webhook_retry_delays_s": (0.2, 0.2),
        "webhook_timeout_s": 2.0,
    }
    return make_settings(redis_url, f"webhooks-{name}", **(options | overrides))


@pytest.fixture()
def api(redis_url: str, request: pytest.FixtureRequest) -> Iterator[tuple[TestClient, Settings]]:
    """The API of a deployment of its own (own queue and key prefix): no worker serves it."""
    settings = deployment(redis_url, request.node.name[-40:])
    with TestClient(create_app(settings)) as client:
        yield client, settings
    _purge(settings)


def submit(client: TestClient, webhook_url: str, **data: str) -> dict:
    resp = client.post(
        "/jobs/optimize",
        files=job_files(),
        data={"size": "32", "steps": "2", "webhook_url": webhook_url, **data},
    )
    assert resp.status_code == 202, resp.text
    return resp.json()


def wait_for_webhook_state(client: TestClient, job_id: str, state: str, timeout_s: float = 30) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        status = client.get(f"/jobs/{job_id}").json()
        if status["webhook"]["state"] == state or time.monotonic() > deadline:
            assert status["webhook"]["state"] == state, status["webhook"]
            return status
        time.sleep(0.1)


def test_a_finished_job_is_posted_once_signed_with_its_final_status(redis_url: str, receiver: Receiver):
    settings = deployment(redis_url, "finished")
    worker = WorkerProcess(settings)
    try:
        with TestClient(create_app(settings)) as client:
            job = submit(client, receiver.url())
            assert job["webhook"] == {
                "state": "pending",
                "attempts": 0,
                "last_attempt_at": None,
                "next_attempt_at": None,
                "last_error": None,
            }
            (delivery,) = receiver.wait_for(1)
            status = wait_for_webhook_state(client, job["id"], "delivered")
            time.sleep(0.5)  # a few more polls: it is not sent again
            assert len(receiver.received) == 1
    finally:
        worker.stop()
        _purge(settings)

    assert delivery.path == "/hooks/atelier?token=abc"
    assert delivery.headers["Host"] == receiver.url().split("/")[2]  # the URL's host, not the address
    assert delivery.headers["Content-Type"] == "application/json"
    assert delivery.headers["webhook-id"] == job["id"]
    # Standard Webhooks: the spec's library verifies it, and so does the spec's recipe by hand.
    message = Webhook(SECRET).verify(delivery.body, delivery.headers)
    signed = f"{job['id']}.{delivery.headers['webhook-timestamp']}.".encode() + delivery.body
    expected = base64.b64encode(hmac.new(SECRET_KEY, signed, hashlib.sha256).digest()).decode()
    assert delivery.headers["webhook-signature"] == f"v1,{expected}"
    assert abs(int(delivery.headers["webhook-timestamp"]) - time.time()) < 120

    assert JobEndedMessage.model_validate_json(delivery.body).data.id == job["id"]  # as documented
    assert message["type"] == "job.finished"
    data = message["data"]
    assert data["id"] == job["id"] and data["state"] == "finished" and data["kind"] == "optimize"
    assert data["result_url"] == f"/jobs/{job['id']}/result" and data["progress"]["step"] == 2
    assert "webhook" not in data
    assert status["webhook"]["attempts"] == 1 and status["webhook"]["last_error"] is None


def test_a_failed_delivery_is_retried_until_2xx_with_the_same_id(api, receiver: Receiver):
    client, _ = api
    receiver._statuses = [503, 500, 204]
    job = submit(client, receiver.url())
    assert client.delete(f"/jobs/{job['id']}").json()["state"] == "canceled"  # queued: ends at once

    first, second, third = receiver.wait_for(3)
    status = wait_for_webhook_state(client, job["id"], "delivered")
    assert {d.headers["webhook-id"] for d in (first, second, third)} == {job["id"]}
    assert first.message["type"] == "job.canceled" and third.message["data"]["state"] == "canceled"
    for delivery in (first, second, third):
        Webhook(SECRET).verify(delivery.body, delivery.headers)
    assert status["webhook"]["attempts"] == 3 and status["webhook"]["last_error"] is None
    metrics = client.get("/metrics").text
    assert 'atelier_webhook_attempts_total{outcome="retry"} 2.0' in metrics
    assert 'atelier_webhook_attempts_total{outcome="delivered"} 1.0' in metrics


def test_a_delivery_is_given_up_after_the_last_retry(api, receiver: Receiver):
    client, _ = api
    receiver._statuses = [500]
    job = submit(client, receiver.url())
    client.delete(f"/jobs/{job['id']}")

    status = wait_for_webhook_state(client, job["id"], "failed")
    assert status["webhook"]["attempts"] == 3  # the first and one per retry delay
    assert status["webhook"]["last_error"] == "HTTP 500" and status["webhook"]["next_attempt_at"] is None
    time.sleep(0.5)
    assert len(receiver.received) == 3


def test_a_receiver_that_is_down_is_retried_and_the_error_says_so(api):
    client, _ = api
    down = Receiver()
    url = down.url()
    down.close()  # nothing listens on that port any more
    job = submit(client, url)
    client.delete(f"/jobs/{job['id']}")

    status = wait_for_webhook_state(client, job["id"], "failed")
    assert status["webhook"]["attempts"] == 3
    assert "could not connect" in status["webhook"]["last_error"]


def test_two_api_processes_deliver_each_webhook_once(redis_url: str, receiver: Receiver):
    settings = deployment(redis_url, "two-processes", webhook_poll_interval_s=0.05)
    try:
        with TestClient(create_app(settings)) as one, TestClient(create_app(settings)):
            ids = [submit(one, receiver.url())["id"] for _ in range(6)]
            for job_id in ids:
                one.delete(f"/jobs/{job_id}")
            receiver.wait_for(6)
            for job_id in ids:
                wait_for_webhook_state(one, job_id, "delivered")
            time.sleep(0.5)
    finally:
        _purge(settings)
    assert sorted(d.headers["webhook-id"] for d in receiver.received) == sorted(ids)


def test_deleting_a_job_stops_its_webhook_and_leaves_no_key(redis_url: str, receiver: Receiver):
    settings = deployment(redis_url, "deleted", webhook_retry_delays_s=(1.5,))
    receiver._statuses = [500]
    try:
        with TestClient(create_app(settings)) as client:
            job = submit(client, receiver.url())
            client.delete(f"/jobs/{job['id']}")
            receiver.wait_for(1)
            wait_for_webhook_state(client, job["id"], "pending")
            assert client.delete(f"/jobs/{job['id']}").status_code == 204  # ended: deleted, webhook too
            time.sleep(2.5)  # past the retry's time: nothing more is sent
            assert len(receiver.received) == 1
            redis = Redis.from_url(settings.redis_url)
            assert redis.zscore(JobKeys(settings.key_prefix).webhooks_due, job["id"]) is None
            assert not list(redis.scan_iter(match=f"{settings.key_prefix}job:{job['id']}*"))
    finally:
        _purge(settings)


def test_a_job_without_a_webhook_says_so(api):
    client, _ = api
    resp = client.post("/jobs/optimize", files=job_files(), data={"size": "32"})
    assert resp.status_code == 202 and resp.json()["webhook"] is None


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:8000/hook", "not a public address"),
        ("http://localhost/hook", "not a public address"),
        ("http://10.1.2.3/hook", "not a public address"),
        ("http://[::1]/hook", "not a public address"),
        ("http://[::ffff:169.254.169.254]/latest/meta-data", "not a public address"),
        ("http://2130706433/", "not a public address"),  # 127.0.0.1 as one number
        ("http://224.0.0.1/", "not a public address"),
        ("ftp://example.com/hook", "http:// or https://"),
        ("/hooks/atelier", "http:// or https://"),
        ("https://user:secret@example.com/hook", "user name or password"),
        ("https://example.com:70000/hook", "not a TCP port"),
        ("http://[zz]/hook", "not a valid URL"),
        ("https://no-such-host.invalid/hook", "does not resolve"),
        ("https://" + "a" * 2100 + ".com/", "at most 2048 characters"),
    ],
)
def test_urls_the_server_must_not_call_are_422_naming_the_field(redis_url: str, url: str, why: str):
    settings = make_settings(redis_url, "webhooks-refused")  # the default: public addresses only
    with TestClient(create_app(settings)) as client:
        resp = client.post("/jobs/optimize", files=job_files(), data={"size": "32", "webhook_url": url})
    assert resp.status_code == 422 and resp.headers["content-type"] == PROBLEM, resp.text
    assert resp.json()["field"] == "webhook_url" and why in resp.json()["detail"], resp.json()["detail"]


def test_a_public_address_is_accepted_by_default(redis_url: str):
    settings = make_settings(redis_url, "webhooks-public", webhook_timeout_s=0.5, webhook_retry_delays_s=())
    try:
        with TestClient(create_app(settings)) as client:
            job = submit(client, "https://93.184.215.14/hooks/atelier")  # an address literal: no DNS
            assert job["webhook"]["state"] == "pending"
            assert client.delete(f"/jobs/{job['id']}").status_code == 200
    finally:
        _purge(settings)


def test_every_job_kind_takes_a_webhook(api, receiver: Receiver):
    client, _ = api
    clip = ("file", ("clip.mp4", make_clip(frames=4, width=32, height=32, audio=False), "video/mp4"))
    resp = client.post(
        "/jobs/stylize-video", files=[clip], data={"style": "starry_night", "webhook_url": receiver.url()}
    )
    assert resp.status_code == 202 and resp.json()["webhook"]["state"] == "pending", resp.text
    client.delete(f"/jobs/{resp.json()['id']}")
    (delivery,) = receiver.wait_for(1)
    assert delivery.message["data"]["kind"] == "stylize-video"

    refused = client.post(
        "/styles",
        files=[("image", ("p.png", job_files()[1][1][1], "image/png"))],
        data={"name": "hooked", "webhook_url": "gopher://example.com/"},
    )
    assert refused.status_code == 422 and refused.json()["field"] == "webhook_url", refused.text


def test_a_server_without_webhooks_refuses_the_field(redis_url: str, receiver: Receiver):
    settings = make_settings(redis_url, "webhooks-off", webhooks_enabled=False)
    with TestClient(create_app(settings)) as client:
        resp = client.post(
            "/jobs/optimize", files=job_files(), data={"size": "32", "webhook_url": receiver.url()}
        )
    assert resp.status_code == 422 and resp.json()["field"] == "webhook_url"
    assert "does not send webhooks" in resp.json()["detail"]


def test_addresses_that_are_not_public_unicast_are_refused_even_when_private_ones_are_allowed():
    import ipaddress

    assert not allowed(ipaddress.ip_address("0.0.0.0"), allow_private=True)
    assert not allowed(ipaddress.ip_address("ff02::1"), allow_private=True)
    assert allowed(ipaddress.ip_address("192.168.1.2"), allow_private=True)
    assert not allowed(ipaddress.ip_address("192.168.1.2"), allow_private=False)
    assert allowed(ipaddress.ip_address("93.184.215.14"), allow_private=False)
    for inward in ("64:ff9b::a00:1", "2002:a00:1::1", "2001:0:4136:e378:8000:63bf:f5ff:fffe"):
        assert not allowed(ipaddress.ip_address(inward), allow_private=False), inward  # NAT64, 6to4, Teredo
    assert allowed(ipaddress.ip_address("64:ff9b::5db8:d70e"), allow_private=False)  # NAT64 of a public one
    with pytest.raises(UnsafeTarget):
        checked_addresses(parse_target("http://[::ffff:10.0.0.1]/"), allow_private=False)


def test_the_webhook_is_in_the_openapi_document(client: TestClient):
    webhook = client.get("/openapi.json").json()["webhooks"]["job-ended"]["post"]
    body = webhook["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"].endswith("/JobEndedMessage") and list(webhook["responses"]) == ["2XX"]
    headers = {p["name"] for p in webhook["parameters"]}
    assert headers == {"webhook-id", "webhook-timestamp", "webhook-signature"}


def test_an_empty_secret_is_none_and_one_without_a_key_fails_at_start_up(redis_url: str):
    assert make_settings(redis_url, "secret", webhook_secret="").webhook_secret is None
    assert (
        make_settings(redis_url, "secret", webhook_secret=SECRET).webhook_secret.get_secret_value() == SECRET
    )
    with pytest.raises(ValueError, match="ATELIER_WEBHOOK_SECRET"):
        make_settings(redis_url, "secret", webhook_secret="whsec_!!!")
