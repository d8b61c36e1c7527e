"""A finished job's result as HTTP caches and download tools expect it: ETag / If-None-Match (304) and
Range / If-Range (206, 416). Real API, Redis and worker."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.byte_ranges import Conditions, requested_range
from app.problems import Problem
from tests.test_jobs_api import submit, wait_for

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def finished(client: TestClient, worker) -> tuple[str, bytes]:
    """A finished Gatys job's id and its PNG result."""
    job = submit(client, steps=2, size=48)
    assert wait_for(client, job["id"], {"finished", "failed"})["state"] == "finished"
    resp = client.get(f"/jobs/{job['id']}/result")
    assert resp.status_code == 200
    return job["id"], resp.content


def test_a_result_has_an_etag_and_a_client_that_has_it_gets_304(client: TestClient, finished):
    job_id, body = finished
    first = client.get(f"/jobs/{job_id}/result")
    etag = first.headers["etag"]
    assert (
        first.headers["accept-ranges"] == "bytes"
        and etag == client.get(f"/jobs/{job_id}/result").headers["etag"]
    )
    for validator in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        again = client.get(f"/jobs/{job_id}/result", headers={"If-None-Match": validator})
        assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    other = client.get(f"/jobs/{job_id}/result", headers={"If-None-Match": '"something-else"'})
    assert other.status_code == 200 and other.content == body
    jpeg = client.get(f"/jobs/{job_id}/result", params={"format": "jpeg"}, headers={"If-None-Match": etag})
    assert jpeg.status_code == 200 and jpeg.headers["etag"] != etag  # another representation


def test_a_broken_off_download_resumes_with_a_range(client: TestClient, finished):
    job_id, body = finished
    url = f"/jobs/{job_id}/result"
    head = client.get(url, headers={"Range": "bytes=0-99"})
    assert head.status_code == 206 and head.content == body[:100]
    assert head.headers["content-range"] == f"bytes 0-99/{len(body)}"
    rest = client.get(url, headers={"Range": "bytes=100-", "If-Range": head.headers["etag"]})
    assert rest.status_code == 206 and head.content + rest.content == body
    tail = client.get(url, headers={"Range": "bytes=-50"})
    assert tail.status_code == 206 and tail.content == body[-50:]
    beyond = client.get(url, headers={"Range": f"bytes=10-{len(body) + 1000}"})
    assert beyond.status_code == 206 and beyond.content == body[10:]


@pytest.mark.parametrize(
    "headers",
    [
        {"Range": "bytes=0-1,5-6"},  # several ranges: the whole result, as RFC 9110 allows
        {"Range": "bytes=x-y"},
        {"Range": "items=0-10"},
        {"Range": "bytes=9-3"},
        {"Range": "bytes=0-10", "If-Range": '"an-older-version"'},
    ],
)
def test_ranges_it_does_not_serve_get_the_whole_result(client: TestClient, finished, headers):
    job_id, body = finished
    resp = client.get(f"/jobs/{job_id}/result", headers=headers)
    assert resp.status_code == 200 and resp.content == body


def test_a_range_past_the_end_is_416_with_the_length(client: TestClient, finished):
    job_id, body = finished
    for header in (f"bytes={len(body)}-", "bytes=-0"):
        resp = client.get(f"/jobs/{job_id}/result", headers={"Range": header})
        assert resp.status_code == 416 and resp.headers["content-type"] == PROBLEM, resp.text
        assert resp.headers["content-range"] == f"bytes */{len(body)}" and resp.json()["field"] == "Range"


def test_range_arithmetic():
    etag = '"j-png"'

    def span(header: str, length: int = 1000) -> tuple[int, int] | None:
        return requested_range(Conditions(range=header), etag, length)

    assert span("bytes=0-0") == (0, 0)
    assert span("bytes=999-") == (999, 999)
    assert span("bytes=-1") == (999, 999)
    assert span("bytes=-5000") == (0, 999)
    assert span("bytes = 5 - 9") == (5, 9)
    assert span("bytes=-") is None
    with pytest.raises(Problem):
        span("bytes=1000-")


def test_head_of_a_result_gives_its_size_and_etag(client: TestClient, finished):
    job_id, body = finished
    head = client.head(f"/jobs/{job_id}/result")
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == len(body)
    assert head.headers["etag"] == client.get(f"/jobs/{job_id}/result").headers["etag"]
