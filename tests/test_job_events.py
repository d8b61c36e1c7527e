"""GET /jobs/{id}/events over a real HTTP connection: events arrive live, the stream ends with the job."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import httpx

from tests.images import encode, photo_like, stripes


def submit(base_url: str, **fields) -> dict:
    files = [
        ("content", ("photo.png", encode(photo_like()), "image/png")),
        ("style", ("style.png", encode(stripes()), "image/png")),
    ]
    data = {"size": "48", **{k: str(v) for k, v in fields.items()}}
    resp = httpx.post(f"{base_url}/jobs/optimize", files=files, data=data, timeout=30)
    assert resp.status_code == 202, resp.text
    return resp.json()


def read_events(response: httpx.Response) -> Iterator[tuple[str, dict, float]]:
    """(event name, JSON data, arrival time) per server-sent event; comments are skipped."""
    name, data = "message", []
    for line in response.iter_lines():
        if not line:
            if data:
                yield name, json.loads("\n".join(data)), time.monotonic()
            name, data = "message", []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


def test_events_follow_the_job_and_the_stream_ends_when_it_finishes(live_server, worker):
    job = submit(live_server.url, steps=20, optimizer="adam", seed=1)
    with httpx.stream("GET", f"{live_server.url}/jobs/{job['id']}/events", timeout=120) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["cache-control"] == "no-cache"
        events = list(read_events(resp))  # returns only because the server closed the stream
    names = [name for name, _, _ in events]
    assert names[0] == "state" and names[-1] == "state"
    states = [body["state"] for name, body, _ in events if name == "state"]
    assert states[0] in ("queued", "started") and states[-1] == "finished"
    assert len(states) == len(set(states)), "a state is announced once"
    steps = [body["progress"]["step"] for _, body, _ in events]
    assert steps == sorted(steps)
    final = events[-1][1]
    assert final["progress"]["percent"] == 100.0 and final["result_url"]
    assert set(final["progress"]["losses"]) >= {"content", "style", "tv"}
    assert all(body["id"] == job["id"] for _, body, _ in events)


def test_progress_arrives_live_and_canceling_ends_the_stream(live_server, worker):
    """The test reacts to a progress event while the stream is open: proof that events are pushed."""
    job = submit(live_server.url, steps=2000)
    url = f"{live_server.url}/jobs/{job['id']}"
    seen = []
    with httpx.stream("GET", f"{url}/events", timeout=120) as resp:
        for name, body, _ in read_events(resp):
            seen.append((name, body["state"]))
            if name == "progress" and body["progress"]["step"] >= 1 and not body["cancel_requested"]:
                assert httpx.delete(url, timeout=10).status_code == 200
    assert ("progress", "started") in seen
    assert seen[-1] == ("state", "canceled")


def test_stream_of_an_ended_job_is_one_state_event(live_server, worker):
    job = submit(live_server.url, steps=2000)
    url = f"{live_server.url}/jobs/{job['id']}"
    httpx.delete(url, timeout=10)
    deadline = time.monotonic() + 60
    while httpx.get(url, timeout=10).json()["state"] != "canceled":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    with httpx.stream("GET", f"{url}/events", timeout=30) as resp:
        events = list(read_events(resp))
    assert [(name, body["state"]) for name, body, _ in events] == [("state", "canceled")]


def test_unknown_or_malformed_job_is_a_problem_not_a_stream(live_server):
    missing = httpx.get(f"{live_server.url}/jobs/{uuid.uuid4()}/events", timeout=10)
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["field"] == "job_id"
    malformed = httpx.get(f"{live_server.url}/jobs/not-a-uuid/events", timeout=10)
    assert malformed.status_code == 404  # job ids are UUIDs: any other id names no resource
    assert malformed.headers["content-type"] == "application/problem+json"


def test_events_endpoint_is_documented_as_an_event_stream(client):
    operation = client.get("/openapi.json").json()["paths"]["/jobs/{job_id}/events"]["get"]
    assert "text/event-stream" in operation["responses"]["200"]["content"]
    assert "404" in operation["responses"]
    assert "terminal state" in operation["description"]
