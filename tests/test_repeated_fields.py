"""A single-valued field sent twice is a 422 naming it, not a silent last-one-wins; list fields may repeat."""

from __future__ import annotations

import uuid
from typing import Annotated

import pytest
from fastapi import File, UploadFile
from fastapi.testclient import TestClient

from app.repeated_fields import accepts_many
from tests.images import encode, photo_like

PROBLEM_JSON = "application/problem+json"


@pytest.fixture(scope="module")
def photo_png() -> bytes:
    return encode(photo_like(48, 32))


def assert_repeated(response, field: str) -> dict:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body = response.json()
    assert body["field"] == field
    assert field in body["detail"] and "more than once" in body["detail"]
    assert [e["field"] for e in body["errors"]] == [field]
    return body


def test_style_sent_twice_is_refused_with_the_blend_syntax(client: TestClient, photo_png: bytes) -> None:
    r = client.post(
        "/stylize",
        files={"file": ("photo.png", photo_png, "image/png")},
        data={"style": ["starry_night", "great_wave"]},
    )
    body = assert_repeated(r, "style")
    assert "comma-separated" in body["detail"]


def test_each_repeated_scalar_is_named(client: TestClient, photo_png: bytes) -> None:
    r = client.post(
        "/stylize",
        files={"file": ("photo.png", photo_png, "image/png")},
        data={"style": "udnie", "size": ["32", "64"], "format": ["png", "png"]},
    )
    assert r.status_code == 422
    body = r.json()
    assert body["field"] == "format"  # sorted: the first one named
    assert [e["field"] for e in body["errors"]] == ["format", "size"]


def test_a_repeated_file_field_that_takes_one_file_is_refused(client: TestClient, photo_png: bytes) -> None:
    part = ("photo.png", photo_png, "image/png")
    r = client.post("/stylize", files=[("file", part), ("file", part)], data={"style": "udnie"})
    assert_repeated(r, "file")


def test_list_fields_still_repeat(client: TestClient, photo_png: bytes) -> None:
    part = ("photo.png", photo_png, "image/png")
    r = client.post("/classify", files=[("file", part), ("file", part)], data={"top_k": "2"})
    assert r.status_code == 200, r.text
    assert len(r.json()["results"]) == 2
    r = client.post("/classify", files=[("file", part)], data={"top_k": ["1", "10"]})
    assert_repeated(r, "top_k")


def test_repeated_query_parameter_is_refused(client: TestClient) -> None:
    r = client.get(f"/jobs/{uuid.uuid4()}/result", params=[("format", "png"), ("format", "jpeg")])
    assert_repeated(r, "format")
    # once, it goes on to the route's own answer (no such job)
    assert client.get(f"/jobs/{uuid.uuid4()}/result", params={"format": "png"}).status_code == 404


def test_accepts_many_reads_the_declared_types() -> None:
    assert accepts_many(list[UploadFile])
    assert accepts_many(list[UploadFile] | None)
    assert accepts_many(Annotated[list[str], File()])
    assert not accepts_many(str)
    assert not accepts_many(int | None)
    assert not accepts_many(UploadFile)
