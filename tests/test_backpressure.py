"""Backpressure against the real app and Redis: queue bound (503), per-key quota (429), load shedding
on the synchronous models (503) and their deadline (504), all with Retry-After."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from app.admission import ModelGate
from app.main import create_app
from app.problems import Problem
from tests.conftest import _purge as purge
from tests.conftest import make_settings
from tests.images import encode, photo_like
from tests.test_api_keys import ALPHA, BETA, bearer, submit
from tests.test_jobs_api import wait_for

PROBLEM = "application/problem+json"


def _retry_after(resp) -> int:
    value = int(resp.headers["retry-after"])
    assert value >= 1
    return value


@contextlib.contextmanager
def jobs_app(redis_url: str, name: str, **limits) -> Iterator[TestClient]:
    """An app on a queue of its own (no worker: its jobs stay queued) with the given limits."""
    settings = make_settings(redis_url, name, api_keys=f"{ALPHA},{BETA}", **limits)
    try:
        with TestClient(create_app(settings)) as client:
            yield client
    finally:
        purge(settings)


def test_a_full_queue_answers_503_with_retry_after(redis_url: str):
    with jobs_app(redis_url, "bp-queue", max_queued_jobs=2, max_jobs_per_key=0) as jobs_client:
        _full_queue(jobs_client)


def _full_queue(jobs_client: TestClient) -> None:
    first, second = submit(jobs_client, ALPHA), submit(jobs_client, BETA)
    resp = jobs_client.post(
        "/jobs/optimize",
        files=[
            ("content", ("p.png", encode(photo_like()), "image/png")),
            ("style", ("s.png", encode(photo_like(seed=1)), "image/png")),
        ],
        headers=bearer(ALPHA),
    )
    assert resp.status_code == 503 and resp.headers["content-type"] == PROBLEM
    assert resp.json()["type"] == "/problems/queue-full" and resp.json()["queued_jobs"] == 2
    _retry_after(resp)
    # A canceled job leaves the queue: there is room again.
    assert jobs_client.delete(f"/jobs/{first['id']}", headers=bearer(ALPHA)).status_code == 200
    submit(jobs_client, ALPHA)
    assert jobs_client.get(f"/jobs/{second['id']}", headers=bearer(BETA)).json()["state"] == "queued"


def test_a_key_over_its_quota_of_unfinished_jobs_gets_429_others_do_not(redis_url: str):
    with jobs_app(redis_url, "bp-quota", max_jobs_per_key=2) as jobs_client:
        _quota(jobs_client)


def _quota(jobs_client: TestClient) -> None:
    first = submit(jobs_client, ALPHA)
    submit(jobs_client, ALPHA)
    files = [
        ("content", ("p.png", encode(photo_like()), "image/png")),
        ("style", ("s.png", encode(photo_like(seed=1)), "image/png")),
    ]
    over = jobs_client.post("/jobs/optimize", files=files, headers=bearer(ALPHA))
    assert over.status_code == 429 and over.headers["content-type"] == PROBLEM
    assert over.json()["type"] == "/problems/too-many-jobs" and over.json()["unfinished_jobs"] == 2
    _retry_after(over)
    submit(jobs_client, BETA)  # another key has its own quota
    assert jobs_client.delete(f"/jobs/{first['id']}", headers=bearer(ALPHA)).status_code == 200
    submit(jobs_client, ALPHA)  # a canceled job no longer counts


def test_a_finished_job_frees_its_quota_slot(settings, worker):
    """With the real worker: the quota counts queued and running jobs, not finished ones."""
    keyed = make_settings(settings.redis_url, "main", api_keys=ALPHA, max_jobs_per_key=1)
    with TestClient(create_app(keyed)) as client:
        job = submit(client, ALPHA)
        files = [
            ("content", ("p.png", encode(photo_like()), "image/png")),
            ("style", ("s.png", encode(photo_like(seed=1)), "image/png")),
        ]
        busy = client.post("/jobs/optimize", files=files, data={"size": "32"}, headers=bearer(ALPHA))
        if busy.status_code != 429:  # the first job already finished: then this one must be admitted
            assert busy.status_code == 202, busy.text
            job = busy.json()

        class AsAlpha:
            def get(self, url: str):
                return client.get(url, headers=bearer(ALPHA))

        assert wait_for(AsAlpha(), job["id"], {"finished", "failed"})["state"] == "finished"
        submit(client, ALPHA)


def _classify_files(n: int, side: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    png = encode(photo_like(side, side))
    return [("file", (f"{i}.png", png, "image/png")) for i in range(n)]


def test_classify_sheds_load_past_its_pending_bound_with_503(settings):
    shedding = make_settings(settings.redis_url, "shed", classify_max_pending=1)
    with TestClient(create_app(shedding)) as client:
        files = _classify_files(16, 96)

        def post(_: int):
            return client.post("/classify", files=files)

        with ThreadPoolExecutor(max_workers=12) as pool:
            responses = list(pool.map(post, range(36)))
        counts = Counter(r.status_code for r in responses)
        assert set(counts) <= {200, 503}, counts
        assert counts[200] >= 1 and counts[503] >= 1, counts
        shed = next(r for r in responses if r.status_code == 503)
        assert shed.headers["content-type"] == PROBLEM and shed.json()["type"] == "/problems/overloaded"
        _retry_after(shed)
        metrics = client.get("/metrics").text
        assert (
            f'atelier_model_shed_requests_total{{model="classify",reason="overloaded"}} {counts[503]}.0'
            in (metrics)
        )
        assert client.post("/classify", files=files).status_code == 200  # and it recovers at once


def test_stylize_sheds_load_past_its_pending_bound_with_503(settings):
    shedding = make_settings(settings.redis_url, "shed-stylize", stylize_max_pending=1)
    with TestClient(create_app(shedding)) as client:
        style = client.get("/styles").json()["styles"][0]["name"]
        photo = encode(photo_like(192, 144))

        def post(_: int):
            return client.post(
                "/stylize",
                files={"file": ("p.png", photo, "image/png")},
                data={"style": style, "size": "192"},
            )

        with ThreadPoolExecutor(max_workers=6) as pool:
            responses = list(pool.map(post, range(12)))
        counts = Counter(r.status_code for r in responses)
        assert set(counts) <= {200, 503} and counts[200] >= 1 and counts[503] >= 1, counts
        shed = next(r for r in responses if r.status_code == 503)
        assert shed.json()["type"] == "/problems/overloaded" and _retry_after(shed) >= 1
        assert client.app.state.model_gates["stylize"].pending == 0


def test_a_request_past_its_deadline_gets_504_not_a_long_wait(settings):
    hurried = make_settings(settings.redis_url, "deadline", request_deadline_s=0.001)
    with TestClient(create_app(hurried)) as client:
        resp = client.post("/classify", files=_classify_files(8, 384))
        assert resp.status_code == 504 and resp.headers["content-type"] == PROBLEM
        assert resp.json()["type"] == "/problems/deadline-exceeded"
        _retry_after(resp)
        assert client.app.state.model_gates["classify"].pending == 0  # nothing left behind


def test_gate_bounds_pending_requests_and_cuts_off_at_the_deadline():
    async def scenario() -> None:
        gate = ModelGate("m", max_pending=2, deadline_s=0.2)
        release = asyncio.Event()

        async def slow() -> str:
            await release.wait()
            return "done"

        first = asyncio.create_task(gate.run(slow()))
        second = asyncio.create_task(gate.run(slow()))
        await asyncio.sleep(0.01)
        assert gate.pending == 2
        with pytest.raises(Problem) as shed:
            await gate.run(slow())
        assert shed.value.status == 503 and int(shed.value.headers["Retry-After"]) >= 1
        release.set()
        assert await first == await second == "done"
        assert gate.pending == 0
        with pytest.raises(Problem) as late:
            await gate.run(asyncio.sleep(5))
        assert late.value.status == 504 and gate.shed == {"overloaded": 1, "deadline": 1}
        assert gate.pending == 0

    asyncio.run(scenario())


def test_contract_documents_backpressure(client: TestClient):
    doc = client.get("/openapi.json").json()
    submit_op = doc["paths"]["/jobs/optimize"]["post"]["responses"]
    assert submit_op["429"]["headers"]["Retry-After"]["required"] is True
    assert submit_op["503"]["headers"]["Retry-After"]["required"] is True
    assert submit_op["202"]["headers"]["Location"]["required"] is True
    for path in ("/classify", "/stylize"):
        responses = doc["paths"][path]["post"]["responses"]
        assert {"503", "504"} <= set(responses), path
        assert responses["504"]["content"][PROBLEM]["schema"] == {"$ref": "#/components/schemas/Problem"}
