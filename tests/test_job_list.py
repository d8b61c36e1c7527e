"""GET /jobs: the caller's jobs, newest first, filtered and paged. Real API and Redis; no worker serves
these queues, so the jobs stay queued unless a test cancels them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq.job import Job

from app.auth import digest_of
from app.job_index import Position, entries_after
from app.main import create_app
from core.settings import Settings
from tests.conftest import make_settings
from tests.test_api_keys import ALPHA, BETA, bearer, job_files
from tests.videos import make_clip

PROBLEM = "application/problem+json"


@pytest.fixture()
def deployment(redis_url: str, request: pytest.FixtureRequest) -> Iterator[tuple[TestClient, Settings]]:
    """A deployment of its own per test (own queue and key prefix), so the list holds only its jobs."""
    settings = make_settings(redis_url, f"list-{request.node.name[-40:]}")
    with TestClient(create_app(settings)) as client:
        yield client, settings


def optimize(client: TestClient, headers: dict[str, str] | None = None) -> str:
    resp = client.post("/jobs/optimize", files=job_files(), data={"size": "32"}, headers=headers or {})
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def video(client: TestClient) -> str:
    clip = ("file", ("clip.mp4", make_clip(frames=4, width=32, height=32, audio=False), "video/mp4"))
    resp = client.post("/jobs/stylize-video", files=[clip], data={"style": "starry_night"})
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def listed(client: TestClient, url: str = "/jobs", **params) -> tuple[list[str], list[dict]]:
    """Every job id of every page, following `next`; and the pages themselves."""
    ids, pages = [], []
    resp = client.get(url, params=params) if params else client.get(url)  # params={} drops url's query
    while True:
        assert resp.status_code == 200, resp.text
        page = resp.json()
        pages.append(page)
        ids += [job["id"] for job in page["jobs"]]
        if page["next"] is None:
            return ids, pages
        resp = client.get(page["next"])


def test_newest_first_a_page_at_a_time_with_no_job_twice(deployment):
    client, _ = deployment
    ids = [optimize(client) for _ in range(5)]
    first = client.get("/jobs").json()
    assert [job["id"] for job in first["jobs"]] == ids[::-1] and first["next"] is None
    assert first["jobs"][0]["kind"] == "optimize" and first["jobs"][0]["state"] == "queued"
    assert first["jobs"][0]["links"]["self"] == f"/jobs/{ids[-1]}"

    page = client.get("/jobs", params={"limit": 2}).json()
    assert [job["id"] for job in page["jobs"]] == ids[:2:-1]
    newer = optimize(client)  # queued while the client pages: it moves no page the client has yet to read
    seen, pages = listed(client, page["next"])
    assert seen == ids[2::-1] and all(len(p["jobs"]) <= 2 for p in pages)
    assert newer not in seen
    assert pages[-1]["next"] is None


def test_filters_by_state_and_kind(deployment):
    client, _ = deployment
    queued = optimize(client)
    canceled = optimize(client)
    assert client.delete(f"/jobs/{canceled}").json()["state"] == "canceled"
    clip = video(client)

    assert listed(client, state="canceled")[0] == [canceled]
    assert listed(client, state="queued")[0] == [clip, queued]
    assert listed(client, state="queued,canceled")[0] == [clip, canceled, queued]
    assert listed(client, kind="stylize-video")[0] == [clip]
    assert listed(client, kind="optimize", state="queued")[0] == [queued]
    assert listed(client, kind="train-style")[0] == []
    # A filter that matches little still pages: a short page can have a next one, never a job twice.
    ids, pages = listed(client, state="canceled", limit=1)
    assert ids == [canceled] and len(pages) >= 1


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"state": "running"}, "state"),
        ({"state": ",,"}, "state"),
        ({"state": "queued, canceled"}, "state"),
        ({"kind": "gatys"}, "kind"),
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"cursor": "yesterday"}, "cursor"),
        ({"cursor": "12-not-a-job-id"}, "cursor"),
    ],
)
def test_bad_parameters_are_422_naming_them(client: TestClient, params: dict, field: str):
    resp = client.get("/jobs", params=params)
    assert resp.status_code == 422 and resp.headers["content-type"] == PROBLEM, resp.text
    assert resp.json()["field"] == field
    assert "should match pattern" not in resp.json()["detail"]  # in the words of the docs, not a regex


def test_a_pattern_mismatch_is_explained_by_the_fields_documentation(client: TestClient):
    detail = client.get("/jobs", params={"state": "running"}).json()["detail"]
    assert detail == (
        "state: 'running' is not accepted. Only jobs in these states (comma-separated): "
        "queued, started, finished, failed, canceled."
    )
    image = ("image", ("a.png", b"\x89PNG", "image/png"))
    named = client.post("/styles", data={"name": "Bad Name"}, files=[image]).json()
    assert (
        named["field"] == "name"
        and "'Bad Name' is not accepted. The new style's name: 1 to 40" in named["detail"]
    )


def test_expired_jobs_leave_the_list_and_the_index(deployment):
    client, settings = deployment
    keep, gone = optimize(client), optimize(client)
    redis = Redis.from_url(settings.redis_url)
    redis.delete(Job.key_for(gone))  # as if it had expired
    assert listed(client)[0] == [keep]
    key = f"{settings.key_prefix}jobs:index:open"
    assert [m.decode() for m in redis.zrange(key, 0, -1)] == [keep]
    assert 0 < redis.ttl(key) <= settings.result_ttl_s + settings.job_timeout_s


def test_each_api_key_lists_only_its_own_jobs(redis_url: str):
    settings = make_settings(redis_url, "list-keys", api_keys=f"{ALPHA},{BETA}")
    with TestClient(create_app(settings)) as client:
        alpha = optimize(client, bearer(ALPHA))
        beta = optimize(client, bearer(BETA))
        assert [j["id"] for j in client.get("/jobs", headers=bearer(ALPHA)).json()["jobs"]] == [alpha]
        assert [j["id"] for j in client.get("/jobs", headers=bearer(BETA)).json()["jobs"]] == [beta]
        anonymous = client.get("/jobs")
        assert anonymous.status_code == 401 and anonymous.headers["content-type"] == PROBLEM
        assert Redis.from_url(redis_url).exists(f"{settings.key_prefix}jobs:index:{digest_of(ALPHA)}")


def test_entries_with_the_same_time_are_all_paged_once(settings: Settings):
    redis = Redis.from_url(settings.redis_url)
    key = f"{settings.key_prefix}index-ties-test"
    ids = [f"00000000-0000-4000-8000-00000000000{i}" for i in range(6)]
    redis.zadd(key, {ids[0]: 5, ids[1]: 7, ids[2]: 7, ids[3]: 7, ids[4]: 9, ids[5]: 7})
    seen: list[str] = []
    position: Position | None = None
    while entries := entries_after(redis, key, position, 2):
        seen += [e.job_id for e in entries]
        position = entries[-1]
    assert seen == [ids[4], ids[5], ids[3], ids[2], ids[1], ids[0]]  # by time, then by id, each once
    redis.delete(key)
