"""A non-form body on a form route is a 415 naming what to send; NaN in a ranged field says "finite"."""

from __future__ import annotations

from typing import Annotated

import pytest
from fastapi import FastAPI, File, Form, UploadFile
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from app.form_body import form_fields
from tests.images import encode, photo_like

PROBLEM_JSON = "application/problem+json"


@pytest.mark.parametrize(
    ("path", "upload"),
    [("/stylize", "file"), ("/classify", "file"), ("/jobs/optimize", "content"), ("/styles", "image")],
)
def test_json_body_on_a_form_route_is_415_naming_the_form(client: TestClient, path: str, upload: str) -> None:
    r = client.post(path, json={"style": "udnie"})
    assert r.status_code == 415, r.text
    assert r.headers["content-type"].startswith(PROBLEM_JSON)
    body = r.json()
    assert body["field"] == "content-type"
    assert "multipart/form-data" in body["detail"] and "application/json" in body["detail"]
    assert f"(fields: {upload}," in body["detail"]  # the route's own upload field comes first


def test_content_type_parameters_and_case_do_not_matter(client: TestClient) -> None:
    r = client.post("/stylize", content=b"<x/>", headers={"Content-Type": "Text/XML; charset=utf-8"})
    assert r.status_code == 415
    assert "not text/xml;" in r.json()["detail"]


def test_no_body_still_names_the_missing_fields(client: TestClient) -> None:
    r = client.post("/stylize")
    assert r.status_code == 422
    assert r.json()["field"] == "file"


def test_a_form_still_passes(client: TestClient) -> None:
    photo = encode(photo_like(40, 32))
    r = client.post("/stylize", files={"file": ("p.png", photo, "image/png")}, data={"style": "udnie"})
    assert r.status_code == 200, r.text
    r = client.post("/classify", files={"file": ("p.png", photo, "image/png")})
    assert r.status_code == 200, r.text


def test_form_fields_lists_the_declared_uploads_and_fields() -> None:
    demo = FastAPI()

    @demo.post("/upload")
    async def upload(
        file: Annotated[UploadFile, File()], note: Annotated[str, Form()] = "", n: int = 0
    ) -> None: ...

    @demo.get("/plain")
    async def plain(q: str = "") -> None: ...

    routes = {r.path: r for r in demo.routes if isinstance(r, APIRoute)}
    assert form_fields(routes["/upload"]) == ("file", "note")  # not the query parameter
    assert form_fields(routes["/plain"]) == ()


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "1e999"])
def test_non_finite_number_is_named_as_such(client: TestClient, value: str) -> None:
    photo = encode(photo_like(40, 32))
    r = client.post(
        "/stylize", files={"file": ("p.png", photo, "image/png")}, data={"style": "udnie", "strength": value}
    )
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["field"] == "strength"
    assert "finite number" in body["detail"], body["detail"]


@pytest.mark.parametrize(
    ("path", "form", "field"),
    [
        ("/stylize", {"file": "photo.jpg", "style": "udnie"}, "file"),
        ("/jobs/optimize", {"content": "photo.jpg", "style": "starry_night"}, "content"),
    ],
)
def test_text_where_a_file_belongs_says_so(client: TestClient, path: str, form: dict, field: str) -> None:
    r = client.post(path, data=form, files={"unused": ("u.txt", b"x", "text/plain")})  # multipart
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["field"] == field
    assert "uploaded file" in body["detail"] and "UploadFile" not in body["detail"]


def test_a_style_name_sent_to_a_gatys_job_names_the_field(client: TestClient) -> None:
    photo = encode(photo_like(40, 32))
    r = client.post(
        "/jobs/optimize", files={"content": ("p.png", photo, "image/png")}, data={"style": "starry_night"}
    )
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["field"] == "style"  # not "style.0"
    assert "'starry_night'" in body["detail"] and "uploaded file" in body["detail"]
