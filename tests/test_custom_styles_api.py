"""POST /styles and DELETE /styles/{name} against the real app, Redis and worker processes.

A tiny stand-in network (``fast`` arch, two styles) is published to a temporary weights dir that
both the API apps and the worker load (ATELIER_WEIGHTS_DIR), and a few synthetic photos form the
worker's data dir, so a whole fine-tuning job at 64 px takes seconds. Two app instances on the same
Redis and key prefix stand for two API processes.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from redis import Redis

from app.auth import digest_of
from app.main import create_app
from core import style_store
from core.settings import Settings
from core.style_store import CustomStyleMeta, StyleKeys
from models.finetune_style import balance_for, network_with_code, trained_painting_grams
from models.imaging import pil_to_tensor
from models.photos import list_photos, split_photos
from models.style_objective import StyleObjective
from models.styles import load_network, publish, styles_dir
from models.transformer import build, save_transformer, stylize
from models.vgg import load_vgg19
from tests.conftest import WorkerProcess, _purge, make_settings
from tests.images import encode, photo_like, stripes

PROBLEM = "application/problem+json"
BUILTIN = ("starry_night", "great_wave")


# --- fixtures: a tiny network, photos, two apps and a worker ---------------------------------------


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-weights")
    torch.manual_seed(0)
    net = build("fast", num_styles=len(BUILTIN))
    meta = {"atelier.styles": json.dumps(list(BUILTIN)), "atelier.objective": StyleObjective().to_json()}
    save_transformer(styles_dir(root) / "multistyle.safetensors", net, meta)
    paintings = tmp_path_factory.mktemp("paintings")
    stripes(96, 96).save(paintings / "starry_night.jpg")
    publish(root, "multistyle.safetensors", paintings, dict.fromkeys(BUILTIN, "experimental"))
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    (root / "photos").mkdir()
    for i in range(6):
        photo_like(96, 72, seed=i).save(root / "photos" / f"photo_{i}.jpg", quality=92)
    assert split_photos(sorted((root / "photos").iterdir()))[0], "no training photos in the fixture"
    return root


def style_settings(redis_url: str, name: str, weights_dir: Path, data_dir: Path, **overrides) -> Settings:
    base = {
        "weights_dir": weights_dir,
        "data_dir": data_dir,
        "custom_style_crop": 64,
        "custom_style_batch": 1,
        "custom_style_default_iterations": 3,
        "custom_style_poll_s": 0.3,
        "max_custom_styles": 3,
    }
    return make_settings(redis_url, name=name, **{**base, **overrides})


def worker_env(settings: Settings, init: str = "mean") -> dict[str, str]:
    return {
        "ATELIER_CUSTOM_STYLE_INIT": init,
        "ATELIER_WEIGHTS_DIR": str(settings.weights_dir),
        "ATELIER_DATA_DIR": str(settings.data_dir),
        "ATELIER_CUSTOM_STYLE_CROP": str(settings.custom_style_crop),
        "ATELIER_CUSTOM_STYLE_BATCH": str(settings.custom_style_batch),
        "ATELIER_TORCH_THREADS": "1",
    }


@pytest.fixture(scope="module")
def settings(redis_url: str, weights_dir: Path, data_dir: Path) -> Iterator[Settings]:
    s = style_settings(redis_url, "custom-styles", weights_dir, data_dir)
    yield s
    _purge(s)


@pytest.fixture(scope="module")
def app_a(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="module")
def app_b(settings: Settings) -> Iterator[TestClient]:
    """A second API process: same Redis, queue and key prefix, its own memory."""
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="module")
def style_worker(settings: Settings) -> Iterator[WorkerProcess]:
    w = WorkerProcess(settings, extra_env=worker_env(settings, init="nearest"))
    yield w
    w.stop()


@pytest.fixture(scope="module")
def idle(redis_url: str, weights_dir: Path, data_dir: Path) -> Iterator[TestClient]:
    """An app whose queue no worker serves: jobs stay queued (validation, limits, cancel-while-queued)."""
    s = style_settings(redis_url, "custom-styles-idle", weights_dir, data_dir, max_custom_styles=1)
    with TestClient(create_app(s)) as c:
        yield c
    _purge(s)


# --- helpers ---------------------------------------------------------------------------------------


def post_style(client: TestClient, image: bytes | None = None, **form: object):
    files = {
        "image": ("painting.png", encode(stripes(80, 64, period=5)) if image is None else image, "image/png")
    }
    return client.post("/styles", files=files, data={k: str(v) for k, v in form.items()})


def assert_problem(resp, status: int, slug: str, field: str | None) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    body = resp.json()
    assert body["type"] == f"/problems/{slug}" and body.get("field") == field, body
    return body


def wait_for(check: Callable[[], object], timeout_s: float = 120.0, what: str = "") -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def job_state(client: TestClient, job_id: str, states: set[str], timeout_s: float = 120.0) -> dict:
    def check() -> dict | None:
        body = client.get(f"/jobs/{job_id}").json()
        return body if body["state"] in states else None

    return wait_for(check, timeout_s, f"job {job_id} to reach {states}")  # type: ignore[return-value]


def listed(client: TestClient, name: str) -> dict | None:
    return next((s for s in client.get("/styles").json()["styles"] if s["name"] == name), None)


def stylize_request(client: TestClient, photo: Image.Image, **form: object):
    files = {"file": ("photo.png", encode(photo), "image/png")}
    return client.post("/stylize", files=files, data={k: str(v) for k, v in form.items()})


def pixels(resp) -> np.ndarray:
    assert resp.status_code == 200, resp.text
    return np.asarray(Image.open(io.BytesIO(resp.content)).convert("RGB"), dtype=np.float64)


def redis_of(settings: Settings) -> Redis:
    return Redis.from_url(settings.redis_url)


def leftovers(settings: Settings, name: str, job_id: str) -> list[str]:
    """Keys a finished-badly job must not leave: the style, its reservation, its painting."""
    redis, keys = redis_of(settings), StyleKeys(settings.key_prefix)
    found = []
    if redis.exists(keys.style(name)):
        found.append("style hash")
    if redis.sismember(keys.index, name):
        found.append("index entry")
    if redis.hexists(keys.pending, name):
        found.append("reservation")
    if redis.exists(f"{settings.key_prefix}job:{job_id}:style:0"):
        found.append("painting")
    return found


# --- the whole path -----------------------------------------------------------------------------------


def test_a_trained_style_is_served_by_every_api_process_without_a_restart(
    app_a: TestClient, app_b: TestClient, style_worker: WorkerProcess, settings: Settings
) -> None:
    painting = encode(stripes(80, 64, period=5))
    photo = photo_like(72, 56, seed=11)
    before_b = pixels(stylize_request(app_b, photo, style="starry_night"))
    assert_problem(stylize_request(app_b, photo, style="stripes"), 422, "unknown-style", "style")

    resp = post_style(app_a, painting, name="stripes", title="Stripes", artist="A. Test", iterations=4)
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert resp.headers["location"] == f"/jobs/{job['id']}" == job["links"]["self"]
    assert job["state"] == "queued" and job["progress"]["total_steps"] == 4
    expected_options = {"name": "stripes", "kind": "train-style", "iterations": 4, "crop": 64}
    assert expected_options.items() <= job["options"].items()
    assert job["options"]["painting_sha256"] == hashlib.sha256(painting).hexdigest()

    seen: list[dict] = []

    def finished() -> dict | None:
        body = app_a.get(f"/jobs/{job['id']}").json()
        seen.append(body["progress"])
        return body if body["state"] in ("finished", "failed", "canceled") else None

    done = wait_for(finished, 180, "the style job")
    assert done["state"] == "finished", done
    assert done["progress"]["step"] == 4 and done["progress"]["percent"] == 100.0
    assert set(done["progress"]["losses"]) == {"content", "style", "tv", "total"}
    preview = app_a.get(done["result_url"])  # a held-out photo in the new style
    assert preview.status_code == 200 and Image.open(io.BytesIO(preview.content)).size[0] <= 256

    # Stored: float32 code, metadata, thumbnail; no expiry unless configured; reservation released.
    redis, keys = redis_of(settings), StyleKeys(settings.key_prefix)
    network = load_network(settings.weights_dir)
    stored = style_store.load_styles(redis, keys)["stripes"]
    meta = stored.meta
    assert (meta.title, meta.artist, meta.iterations) == ("Stripes", "A. Test", 4)
    assert meta.init == "row 0"  # nearest: starry_night is the only trained style with a thumbnail
    # Finer stripes than the trained painting's: fine-tuned at the trained balance, a lower style weight.
    assert meta.style_weight_scale == pytest.approx(expected_balance(settings, painting), abs=1e-3)
    assert meta.style_weight_scale < 0.9
    assert meta.painting_sha256 == hashlib.sha256(painting).hexdigest()
    assert meta.network_sha256 == network.manifest.network.sha256 and meta.created_at.endswith("Z")
    # The finished job reports what it made.
    info = done["result_info"]
    assert (info["style"], info["iterations"], info["losses"]) == ("stripes", 4, meta.losses)
    assert info["style_weight_scale"] == meta.style_weight_scale
    assert info["network_sha256"] == meta.network_sha256
    assert len(redis.hget(keys.style("stripes"), "code")) == 4 * network.model.code_size
    assert redis.ttl(keys.style("stripes")) == -1 and not redis.hexists(keys.pending, "stripes")

    # The other process lists and serves it within a few seconds (it only polls Redis).
    entry = wait_for(lambda: listed(app_b, "stripes"), 10, "app B to list the style")
    assert entry["custom"]["style_weight_scale"] == meta.style_weight_scale
    assert entry["status"] == "custom" and entry["title"] == "Stripes" and entry["has_thumbnail"]
    assert entry["custom"]["iterations"] == 4 and "owner" not in json.dumps(entry)
    thumb = app_b.get("/styles/stripes/thumbnail")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 256

    served = pixels(stylize_request(app_b, photo, style="stripes"))
    with torch.inference_mode():
        expected = stylize_locally(network, stored.code, photo)
    assert np.abs(served - expected).max() <= 2.0  # ONNX graph vs eager torch, 8-bit output
    assert np.abs(served - before_b).mean() > 1.0  # not the built-in style

    # Blends with built-in styles: the end points are the single styles.
    blend = "starry_night,stripes"
    assert (
        np.abs(pixels(stylize_request(app_b, photo, style=blend, style_weights="0,1")) - served).max() <= 1.0
    )
    assert (
        np.abs(pixels(stylize_request(app_b, photo, style=blend, style_weights="1,0")) - before_b).max()
        <= 1.0
    )
    # app A polls Redis on its own clock: it may pick the style up a moment after app B did.
    wait_for(lambda: listed(app_a, "stripes"), 10, "app A to list the style")
    mixed = stylize_request(app_a, photo, style=blend, style_weights="0.5,0.5")
    assert mixed.status_code == 200 and mixed.headers["x-atelier-style"] == blend

    # Taken now: POST with the same name is a 409 on either process.
    assert_problem(post_style(app_b, name="stripes"), 409, "style-exists", "name")

    # Deleting it from one process removes it from both.
    assert app_b.delete("/styles/stripes").status_code == 204
    assert listed(app_b, "stripes") is None
    wait_for(lambda: listed(app_a, "stripes") is None, 10, "app A to drop the style")
    assert_problem(stylize_request(app_a, photo, style="stripes"), 422, "unknown-style", "style")
    assert_problem(app_a.get("/styles/stripes/thumbnail"), 404, "not-found", "name")
    assert_problem(app_a.delete("/styles/stripes"), 404, "not-found", "name")
    assert leftovers(settings, "stripes", job["id"]) == []


def expected_balance(settings: Settings, painting: bytes) -> float:
    """The style-weight scale the worker should have used, computed here from the same inputs."""
    network = load_network(settings.weights_dir)
    objective = StyleObjective.from_json(network.metadata["atelier.objective"])
    vgg = load_vgg19(objective.deepest)
    grams = objective.painting_grams(vgg, Image.open(io.BytesIO(painting)))
    train, _ = split_photos(list_photos(settings.data_dir / "photos"))
    trained = trained_painting_grams(network, settings.weights_dir, objective, vgg)
    return balance_for(objective, vgg, grams, train, trained)[1]


def stylize_locally(network, code: torch.Tensor, photo: Image.Image) -> np.ndarray:
    out = stylize(network_with_code(network.model, code), pil_to_tensor(photo))
    return out[0].permute(1, 2, 0).mul(255).round().numpy().astype(np.float64)


def test_cancel_a_running_job_leaves_nothing_behind_and_frees_the_name(
    app_a: TestClient, style_worker: WorkerProcess, settings: Settings
) -> None:
    job = post_style(app_a, name="canceled", iterations=2000).json()
    job_state_with_steps = wait_for(
        lambda: (b := app_a.get(f"/jobs/{job['id']}").json())["progress"]["preview_step"] and b,
        120,
        "the job to make progress and store a preview",
    )
    assert job_state_with_steps["state"] == "started"
    preview = app_a.get(f"/jobs/{job['id']}/preview")  # a held-out photo in the style as learned so far
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(preview.content)).size) == 256
    assert_problem(app_a.delete("/styles/canceled"), 409, "style-in-training", "name")
    assert app_a.delete(f"/jobs/{job['id']}").status_code == 200
    done = job_state(app_a, job["id"], {"canceled", "finished", "failed"}, 60)
    assert done["state"] == "canceled", done
    assert 0 < done["progress"]["step"] < 2000
    assert leftovers(settings, "canceled", job["id"]) == []
    assert listed(app_a, "canceled") is None
    again = post_style(app_a, name="canceled", iterations=1)  # the name is free again
    assert again.status_code == 202, again.text
    finished = job_state(app_a, again.json()["id"], {"finished", "failed"})
    assert finished["state"] == "finished" and finished["progress"]["preview_step"] is None
    assert_problem(app_a.get(f"/jobs/{again.json()['id']}/preview"), 409, "no-preview", "job_id")
    assert app_a.delete("/styles/canceled").status_code == 204


def test_a_failed_job_leaves_nothing_behind(redis_url: str, weights_dir: Path, tmp_path: Path) -> None:
    """No photos on the worker's machine: the job fails with a message saying so, and cleans up."""
    (tmp_path / "photos").mkdir()
    s = style_settings(redis_url, "custom-styles-nophotos", weights_dir, tmp_path)
    worker = WorkerProcess(s, extra_env=worker_env(s))
    try:
        with TestClient(create_app(s)) as client:
            job = post_style(client, name="doomed").json()
            done = job_state(client, job["id"], {"failed", "finished"})
            assert done["state"] == "failed"
            assert "no training photos" in done["error"] and "ATELIER_DATA_DIR" in done["error"]
            assert leftovers(s, "doomed", job["id"]) == []
            assert listed(client, "doomed") is None
            assert post_style(client, name="doomed").status_code == 202  # the name is free again
    finally:
        worker.stop()
        _purge(s)


# --- refusals: nothing is queued, nothing is reserved ----------------------------------------------------


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"name": "Upper"}, "name"),
        ({"name": "has space"}, "name"),
        ({"name": "../etc"}, "name"),
        ({"name": "a" * 41}, "name"),
        ({"name": ""}, "name"),
        ({"name": "ok", "iterations": 0}, "iterations"),
        ({"name": "ok", "iterations": 2001}, "iterations"),
        ({"name": "ok", "iterations": "many"}, "iterations"),
        ({"name": "ok", "title": "t" * 201}, "title"),
        ({"name": "ok", "artist": "a" * 201}, "artist"),
        ({"name": "ok", "steps": 5}, "steps"),
    ],
)
def test_bad_fields_are_named(idle: TestClient, form: dict, field: str) -> None:
    assert_problem(post_style(idle, **form), 422, "validation-error", field)


def test_missing_name_or_image_is_named(idle: TestClient) -> None:
    assert_problem(idle.post("/styles", data={"name": "ok"}), 422, "validation-error", "image")
    files = {"image": ("p.png", encode(stripes()), "image/png")}
    assert_problem(idle.post("/styles", files=files), 422, "validation-error", "name")


@pytest.mark.parametrize(
    ("data", "status", "slug"),
    [
        (b"", 422, "invalid-image"),
        (b"just some text, not a painting" * 10, 415, "unsupported-media-type"),
        (encode(stripes(), "PNG")[:60], 422, "invalid-image"),
    ],
)
def test_the_painting_is_validated_like_every_upload(
    idle: TestClient, data: bytes, status: int, slug: str
) -> None:
    assert_problem(post_style(idle, data, name="painting_check"), status, slug, "image")
    assert not redis_of(idle.app.state.settings).hexists(
        StyleKeys(idle.app.state.settings.key_prefix).pending, "painting_check"
    )


def test_built_in_names_are_taken_and_cannot_be_deleted(idle: TestClient) -> None:
    assert_problem(post_style(idle, name="starry_night"), 409, "style-exists", "name")
    assert_problem(idle.delete("/styles/great_wave"), 409, "builtin-style", "name")
    assert_problem(idle.delete("/styles/never_made"), 404, "not-found", "name")


def test_the_limit_counts_jobs_in_flight_and_a_canceled_queued_job_frees_its_place(idle: TestClient) -> None:
    first = post_style(idle, name="first")  # no worker serves this queue: it stays queued
    assert first.status_code == 202, first.text
    preview = assert_problem(idle.get(f"/jobs/{first.json()['id']}/preview"), 409, "no-preview", "job_id")
    assert "has not started" in preview["detail"]
    assert_problem(post_style(idle, name="first"), 409, "style-exists", "name")  # a job is training it
    full = assert_problem(post_style(idle, name="second"), 507, "too-many-styles", "name")
    assert "ATELIER_MAX_CUSTOM_STYLES=1" in full["detail"]
    assert idle.delete(f"/jobs/{first.json()['id']}").json()["state"] == "canceled"
    second = post_style(idle, name="second")
    assert second.status_code == 202, second.text
    assert idle.delete(f"/jobs/{second.json()['id']}").status_code == 200


def test_no_network_loaded_is_a_503(redis_url: str, data_dir: Path, tmp_path: Path) -> None:
    s = style_settings(redis_url, "custom-styles-nonet", tmp_path, data_dir)
    with TestClient(create_app(s)) as client:
        resp = post_style(client, name="nothing")
        assert resp.status_code == 503 and resp.headers["content-type"].startswith(PROBLEM)
    _purge(s)


# --- storage: stale styles, expiry, ownership --------------------------------------------------------


def store_directly(settings: Settings, name: str, network_sha256: str, code_size: int, **meta) -> None:
    """As a worker would: a code, metadata and thumbnail in one transaction."""
    fields = {
        "title": name,
        "artist": "",
        "painting_sha256": "0" * 64,
        "created_at": "2026-11-23T00:00:00Z",
        "iterations": 1,
        **meta,
    }
    style_store.save_style(
        redis_of(settings),
        StyleKeys(settings.key_prefix),
        CustomStyleMeta(name=name, network_sha256=network_sha256, code_size=code_size, **fields),
        torch.zeros(1, code_size),
        encode(stripes(32, 32), "JPEG"),
        settings.custom_style_ttl_s,
    )


def test_a_style_of_other_weights_is_listed_stale_and_not_served(idle: TestClient) -> None:
    settings = idle.app.state.settings
    code_size = idle.app.state.stylizer.network.model.code_size
    store_directly(settings, "old_weights", "f" * 64, code_size)
    entry = wait_for(lambda: listed(idle, "old_weights"), 10, "the stale style to be listed")
    assert entry["status"] == "stale" and "ffffffffffff" in entry["custom"]["stale_reason"]
    body = assert_problem(
        stylize_request(idle, photo_like(40, 32), style="old_weights"), 422, "unknown-style", "style"
    )
    assert "not served" in body["detail"]
    assert "old_weights" not in idle.app.state.custom_styles.served_names
    assert idle.delete("/styles/old_weights").status_code == 204


def test_styles_expire_only_when_a_ttl_is_configured(idle: TestClient) -> None:
    settings = idle.app.state.settings
    network = idle.app.state.stylizer.network
    sha, size = network.manifest.network.sha256, network.model.code_size
    store_directly(settings, "kept", sha, size)
    assert redis_of(settings).ttl(StyleKeys(settings.key_prefix).style("kept")) == -1
    short = settings.model_copy(update={"custom_style_ttl_s": 1})
    store_directly(short, "brief", sha, size)
    assert wait_for(lambda: listed(idle, "brief"), 10, "the style to be listed")["status"] == "custom"
    wait_for(lambda: listed(idle, "brief") is None, 10, "the expired style to disappear")
    assert listed(idle, "kept") is not None
    assert idle.delete("/styles/kept").status_code == 204


def test_with_api_keys_only_the_creator_may_delete(redis_url: str, weights_dir: Path, data_dir: Path) -> None:
    s = style_settings(redis_url, "custom-styles-keys", weights_dir, data_dir, api_keys="key-one,key-two")
    with TestClient(create_app(s)) as client:
        network = client.app.state.stylizer.network
        store_directly(
            s, "owned", network.manifest.network.sha256, network.model.code_size, owner=digest_of("key-one")
        )
        assert client.delete("/styles/owned").status_code == 401
        other = client.delete("/styles/owned", headers={"Authorization": "Bearer key-two"})
        assert_problem(other, 403, "forbidden", "name")
        mine = client.delete("/styles/owned", headers={"Authorization": "Bearer key-one"})
        assert mine.status_code == 204
        assert client.post("/styles", data={"name": "x"}).status_code == 401
    _purge(s)


def test_the_docs_describe_the_new_endpoints(idle: TestClient) -> None:
    doc = idle.get("/openapi.json").json()
    post = doc["paths"]["/styles"]["post"]
    assert {"202", "409", "413", "415", "422", "507"} <= set(post["responses"])
    assert "Location" in post["responses"]["202"]["headers"]
    form = doc["components"]["schemas"][
        post["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[1]
    ]
    props = form["properties"]
    assert props["iterations"]["maximum"] == 2000 and props["iterations"]["minimum"] == 1
    assert props["name"]["pattern"] == "^[a-z0-9_-]{1,40}$" and {"image", "name"} <= set(form["required"])
    assert "normalization parameters" in post["description"]
    delete = doc["paths"]["/styles/{name}"]["delete"]
    assert {"204", "404", "409"} <= set(delete["responses"])


COMMITTED_WEIGHTS = Path(__file__).resolve().parent.parent / "models" / "weights"


@pytest.mark.skipif(
    not (styles_dir(COMMITTED_WEIGHTS) / "manifest.json").is_file(), reason="no style network committed"
)
def test_the_committed_network_learns_and_serves_a_style(redis_url: str, data_dir: Path) -> None:
    """The real network: its stored objective, its P-number code through the served ONNX graph."""
    s = style_settings(redis_url, "custom-styles-real", COMMITTED_WEIGHTS, data_dir)
    worker = WorkerProcess(s, extra_env=worker_env(s))
    try:
        with TestClient(create_app(s)) as client:
            job = post_style(client, name="real_one", iterations=2).json()
            done = job_state(client, job["id"], {"finished", "failed"}, 180)
            assert done["state"] == "finished", done
            network = load_network(COMMITTED_WEIGHTS)
            stored = style_store.load_styles(redis_of(s), StyleKeys(s.key_prefix))["real_one"]
            assert stored.code.shape == (1, network.model.code_size)
            assert stored.meta.network_sha256 == network.manifest.network.sha256
            assert stored.meta.init == "mean"
            entry = wait_for(lambda: listed(client, "real_one"), 10, "the style to be listed")
            assert entry["status"] == "custom"
            photo = photo_like(64, 48, seed=3)
            served = pixels(stylize_request(client, photo, style="real_one"))
            with torch.inference_mode():
                expected = stylize_locally(network, stored.code, photo)
            assert np.abs(served - expected).max() <= 2.0
    finally:
        worker.stop()
        _purge(s)
