"""POST /jobs/stylize-image end to end: the real API, the real Redis and a real worker process."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from core import style_store
from core.store import JobKeys
from core.style_store import CustomStyleMeta, StyleKeys
from models.imaging import finish_stylized, pil_to_tensor
from models.tiled import tile_passes
from models.transformer import pad_to_multiple
from tests.conftest import _purge, make_settings
from tests.images import encode, photo_like, stripes
from tests.job_api import assert_problem, wait_for


def post_image(client: TestClient, photo: bytes | None, **form):
    files = {"file": ("photo.png", photo, "image/png")} if photo is not None else {}
    return client.post("/jobs/stylize-image", files=files, data={k: str(v) for k, v in form.items()})


def submit(client: TestClient, photo: Image.Image, **form) -> dict:
    resp = post_image(client, encode(photo), **form)
    assert resp.status_code == 202, resp.text
    assert resp.headers["location"] == f"/jobs/{resp.json()['id']}"
    return resp.json()


def stored_photo(client: TestClient, job_id: str) -> Image.Image:
    """The photo the worker was given (the API's resize of the upload)."""
    keys = JobKeys(client.app.state.settings.key_prefix)
    return Image.open(io.BytesIO(client.app.state.redis.get(keys.content(job_id)))).convert("RGB")


def whole_image_result(client: TestClient, photo: Image.Image, code: torch.Tensor, **finish) -> np.ndarray:
    """What one forward pass of the whole photo gives, as 8-bit pixels."""
    model = client.app.state.stylizer.network.model
    pixels = pil_to_tensor(photo)
    with torch.inference_mode():
        padded, h, w = pad_to_multiple(pixels)
        out = model.forward_code(padded, code)[..., :h, :w].clamp(0.0, 1.0)
    img = finish_stylized(photo, pixels, out, finish.get("strength", 1.0), finish.get("keep_colors", False))
    return np.asarray(img, dtype=np.int16)


def result_pixels(client: TestClient, done: dict) -> np.ndarray:
    resp = client.get(done["result_url"])
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(resp.content)).convert("RGB"), dtype=np.int16)


def jobs_queued(client: TestClient) -> int:
    return client.app.state.queue.count


def test_a_large_blend_is_painted_in_tiles_exactly_as_one_forward_pass(client, worker) -> None:
    stylizer = client.app.state.stylizer
    names = stylizer.names[:2]
    job = submit(client, photo_like(180, 120, seed=3), style=",".join(names), style_weights="3,1", size=660)
    assert job["state"] == "queued" and job["kind"] == "stylize-image"
    options = job["options"]
    assert (options["width"], options["height"]) == (660, 440) and options["style"] == ",".join(names)
    assert options["style_weights"] == [0.75, 0.25] and "code" not in options
    passes = tile_passes(stylizer.network.model, 440, 660)
    assert job["progress"]["total_steps"] == passes > 2  # several tiles: the statistics passes ran

    done = wait_for(client, job["id"], {"finished", "failed"})
    assert done["state"] == "finished", done
    assert done["progress"]["step"] == done["progress"]["total_steps"] == passes
    assert (done["result_info"]["width"], done["result_info"]["height"]) == (660, 440)
    got = result_pixels(client, done)
    expected = whole_image_result(client, stored_photo(client, job["id"]), stylizer.style_code(names, [3, 1]))
    assert got.shape == (440, 660, 3)
    assert np.abs(got - expected).max() <= 1  # rounding to 8 bits; a seam would be tens of levels

    jpeg = client.get(done["result_url"], params={"format": "jpeg"})
    assert jpeg.status_code == 200 and jpeg.headers["content-type"] == "image/jpeg"


def test_strength_colours_and_the_photo_size_by_default(client, worker) -> None:
    stylizer = client.app.state.stylizer
    name = stylizer.names[0]
    job = submit(client, photo_like(90, 70, seed=4), style=name, strength=0.5, preserve_color="true")
    assert (job["options"]["width"], job["options"]["height"]) == (90, 70)
    done = wait_for(client, job["id"], {"finished", "failed"})
    assert done["state"] == "finished", done
    expected = whole_image_result(
        client, stored_photo(client, job["id"]), stylizer.style_code([name]), strength=0.5, keep_colors=True
    )
    assert np.abs(result_pixels(client, done) - expected).max() <= 2


def test_a_custom_style_is_served_as_learned(client, worker) -> None:
    settings, stylizer = client.app.state.settings, client.app.state.stylizer
    network = stylizer.network
    code = stylizer.style_code(stylizer.names[-1:]) * 0.9 + 0.05  # a code no built-in style has
    meta = CustomStyleMeta(
        name="tiled_custom",
        title="tiled custom",
        artist="",
        painting_sha256="0" * 64,
        network_sha256=network.manifest.network.sha256,
        code_size=network.model.code_size,
        created_at="2026-12-07T00:00:00Z",
        iterations=1,
    )
    keys = StyleKeys(settings.key_prefix)
    style_store.save_style(client.app.state.redis, keys, meta, code, encode(stripes(32, 32), "JPEG"), None)
    try:
        client.app.state.custom_styles.refresh(force=True)
        job = submit(client, photo_like(140, 100, seed=5), style="tiled_custom", size=560)
        done = wait_for(client, job["id"], {"finished", "failed"})
        assert done["state"] == "finished", done
        expected = whole_image_result(client, stored_photo(client, job["id"]), code)
        assert np.abs(result_pixels(client, done) - expected).max() <= 1
    finally:
        style_store.delete_style(client.app.state.redis, keys, "tiled_custom")
        client.app.state.custom_styles.refresh(force=True)


def test_a_running_job_shows_the_picture_being_painted_and_can_be_canceled(client, worker) -> None:
    job = submit(client, photo_like(160, 120, seed=6), style=client.app.state.stylizer.names[0], size=2048)
    started = wait_for(
        client, job["id"], {"started", "finished"}, predicate=lambda b: b["progress"]["step"] > 0
    )
    assert started["state"] == "started" and 0 < started["progress"]["percent"] < 100
    canceled = client.delete(f"/jobs/{job['id']}")
    assert canceled.status_code == 200
    done = wait_for(client, job["id"], {"canceled", "failed", "finished"}, timeout_s=60)
    assert done["state"] == "canceled", done
    assert client.get(f"/jobs/{job['id']}/result").status_code == 409


@pytest.mark.parametrize(
    ("form", "status", "slug", "field"),
    [
        ({"style": "no_such_style"}, 422, "unknown-style", "style"),
        ({"style": "STYLE", "size": 8}, 422, "validation-error", "size"),
        ({"style": "STYLE", "size": 100_000}, 422, "validation-error", "size"),
        ({"style": "STYLE", "style_weights": "1,2"}, 422, "validation-error", "style_weights"),
        ({"style": "STYLE", "strength": 2}, 422, "validation-error", "strength"),
        ({"style": "STYLE", "steps": 5}, 422, "validation-error", "steps"),
        ({}, 422, "validation-error", "style"),
    ],
)
def test_bad_fields_are_named_and_nothing_is_queued(client, form, status, slug, field) -> None:
    form = {k: client.app.state.stylizer.names[0] if v == "STYLE" else v for k, v in form.items()}
    before = jobs_queued(client)
    assert_problem(post_image(client, encode(photo_like(64, 48)), **form), status, slug, field)
    assert jobs_queued(client) == before


def test_bad_photos_are_named(client) -> None:
    style = client.app.state.stylizer.names[0]
    assert_problem(
        post_image(client, b"not an image at all", style=style), 415, "unsupported-media-type", "file"
    )
    assert_problem(post_image(client, None, style=style), 422, "validation-error", "file")


def test_a_size_over_the_pixel_limit_is_refused_before_queueing(redis_url) -> None:
    """Else the worker would refuse to decode the stored photo after the job had waited its turn."""
    settings = make_settings(redis_url, "image-jobs-pixels", max_image_pixels=100_000)
    try:
        with TestClient(create_app(settings)) as small:
            style = small.app.state.stylizer.names[0]
            body = assert_problem(
                post_image(small, encode(photo_like(64, 48)), style=style, size=400),
                422,
                "validation-error",
                "size",
            )
            assert "ATELIER_MAX_IMAGE_PIXELS" in body["detail"] and small.app.state.queue.count == 0
            assert post_image(small, encode(photo_like(64, 48)), style=style, size=300).status_code == 202
    finally:
        _purge(settings)


def test_the_maximum_size_is_in_the_contract(client) -> None:
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/jobs/stylize-image"]["post"]["requestBody"]["content"]["multipart/form-data"]
    schema = body["schema"]
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    size = schema["properties"]["size"]
    assert size["maximum"] == client.app.state.settings.stylize_job_max_size and size["minimum"] == 16
