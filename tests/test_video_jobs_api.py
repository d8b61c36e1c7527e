"""POST /jobs/stylize-video end to end: the real API, the real Redis and a real worker process."""

from __future__ import annotations

import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.images import encode, photo_like, stripes
from tests.job_api import assert_problem, wait_for
from tests.videos import audio_only_mp4, make_clip, streams, zero_frame_webm

MIB = 1024 * 1024


def post_video(
    client: TestClient, data: bytes, filename: str = "clip.mp4", painting: bytes | None = None, **form
):
    files = {"file": (filename, data, "application/octet-stream")}
    if painting is not None:
        files["style_image"] = ("painting.png", painting, "image/png")
    return client.post("/jobs/stylize-video", files=files, data={k: str(v) for k, v in form.items()})


def submit(client: TestClient, data: bytes, **form) -> dict:
    resp = post_video(client, data, **form)
    assert resp.status_code == 202, resp.text
    assert resp.headers["location"] == f"/jobs/{resp.json()['id']}"
    return resp.json()


@pytest.fixture(scope="module")
def style_name(client: TestClient) -> str:
    styles = client.get("/styles").json()["styles"]
    assert styles, "no style network is loaded"
    return styles[0]["name"]


def queued_videos(client: TestClient) -> int:
    """Videos ever stored for jobs of this run: a rejected request must not add one."""
    prefix = client.app.state.settings.key_prefix
    return sum(1 for _ in client.app.state.redis.scan_iter(match=f"{prefix}job:*:video", count=1000))


def test_named_style_end_to_end_keeps_frames_size_timing_and_audio(client, worker, style_name):
    clip = make_clip(frames=30, width=96, height=64, fps=15)
    job = submit(client, clip, style=style_name, size=80)
    assert job["state"] == "queued" and job["progress"]["total_frames"] == 30
    assert job["options"]["kind"] == "stylize-video" and job["options"]["media_type"] == "video/mp4"

    seen: list[dict] = []
    done = wait_for(
        client, job["id"], {"finished", "failed"}, predicate=lambda b: seen.append(b["progress"]) or True
    )
    assert done["state"] == "finished", done
    progress = done["progress"]
    assert progress["frames"] == progress["total_frames"] == progress["step"] == 30
    assert progress["percent"] == 100.0 and progress["frames_per_s"] > 0
    info = done["result_info"]
    assert info["frames"] == 30 and (info["width"], info["height"]) == (80, 54) and info["codec"] == "libx264"
    assert info["audio"] == ["aac: copied"]
    assert info["flicker"]["input"] > 0 and info["flicker"]["output"] > 0
    assert info["colour"] == "sdr"

    result = client.get(done["result_url"])
    assert result.status_code == 200 and result.headers["content-type"] == "video/mp4"
    assert result.headers["content-disposition"].endswith('.mp4"')
    out, source = streams(result.content), streams(clip)
    assert out["codec"] == "h264" and out["frames"] == 30 and out["sizes"] == {(80, 54)}
    assert [p * out["time_base"] for p in out["pts"]] == [p * source["time_base"] for p in source["pts"]]
    assert out["audio_codec"] == "aac" and out["audio_packets"] == source["audio_packets"]

    image_format = client.get(done["result_url"], params={"format": "jpeg"})
    assert_problem(image_format, 422, "validation-error", "format")


def test_gif_round_trips_and_style_image_is_supported(client, worker):
    gif = make_clip(frames=8, width=64, height=48, fps=10, container="gif")
    painting = encode(stripes(64, 64, period=6))
    job = submit(client, gif, filename="clip.gif", painting=painting)
    assert job["options"]["output"] == "gif" and job["options"]["style_image"] is True
    done = wait_for(client, job["id"], {"finished", "failed"})
    assert done["state"] == "finished", done
    result = client.get(done["result_url"])
    assert result.headers["content-type"] == "image/gif"
    out = streams(result.content)
    assert out["format"] == "gif" and out["frames"] == 8 and out["sizes"] == {(64, 48)}


def test_a_running_video_job_shows_its_newest_frame_and_can_be_canceled(client, worker, style_name):
    clip = make_clip(frames=360, width=96, height=64, fps=30, audio=False)
    job = submit(client, clip, style=style_name, size=256)
    seen = wait_for(
        client, job["id"], {"started", "finished"}, predicate=lambda b: b["progress"]["preview_step"]
    )
    preview = client.get(f"/jobs/{job['id']}/preview")
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/jpeg"
    assert int(preview.headers["x-atelier-preview-step"]) >= seen["progress"]["preview_step"] > 0
    frame = Image.open(io.BytesIO(preview.content))
    assert frame.size == (job["options"]["width"], job["options"]["height"]) == (256, 172)  # the output's
    canceled = client.delete(f"/jobs/{job['id']}")
    assert canceled.status_code == 200, canceled.text
    done = wait_for(client, job["id"], {"canceled", "finished", "failed"}, timeout_s=60)
    assert done["state"] == "canceled", done
    assert 0 < done["progress"]["frames"] < 360
    assert client.get(f"/jobs/{job['id']}/result").status_code == 409
    assert client.get(f"/jobs/{job['id']}/preview").status_code == 200  # its last preview stays


def tiny_clip(frames: int, fps: int = 10, width: int = 16, height: int = 16) -> bytes:
    return make_clip(frames=frames, width=width, height=height, fps=fps, audio=False)


def _cut(data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)]


@pytest.mark.parametrize(
    ("what", "make", "status", "slug"),
    [
        ("text file", lambda: b"not a video, just text\n" * 50, 415, "unsupported-media-type"),
        ("an image", lambda: encode(photo_like(64, 48)), 415, "unsupported-media-type"),
        ("empty file", lambda: b"", 422, "invalid-video"),
        ("truncated mp4", lambda: _cut(make_clip(), 0.6), 422, "invalid-video"),
        ("truncated gif", lambda: _cut(make_clip(container="gif"), 0.6), 422, "invalid-video"),
        ("no video stream", audio_only_mp4, 422, "invalid-video"),
        ("zero frames", zero_frame_webm, 422, "invalid-video"),
        (
            "too long",
            lambda: make_clip(frames=61, width=16, height=16, fps=1, audio=False),
            413,
            "video-too-large",
        ),
        (
            "too many frames",
            lambda: tiny_clip(frames=1801, fps=60),
            413,
            "video-too-large",
        ),
        (
            "too many pixels",
            lambda: make_clip(frames=1, width=1922, height=1080, audio=False),
            413,
            "video-too-large",
        ),
        ("too many bytes", lambda: make_clip()[:64] + b"\0" * (50 * MIB), 413, "payload-too-large"),
    ],
)
def test_bad_videos_are_refused_before_anything_is_queued(client, style_name, what, make, status, slug):
    before = queued_videos(client)
    body = assert_problem(post_video(client, make(), style=style_name), status, slug, "file")
    assert body["detail"].startswith("'file'"), body
    assert queued_videos(client) == before, what


def test_a_clip_too_long_to_finish_within_the_job_timeout_is_refused_with_what_fits(
    client, style_name, monkeypatch
):
    """6 frames of 64x48 are 0.018 Mpx; with a 0.01 Mpx budget 3 frames fit at that size."""
    monkeypatch.setattr(client.app.state.settings, "video_max_output_megapixels", 0.01)
    before = queued_videos(client)
    clip = make_clip(frames=6, width=64, height=48, audio=False)
    body = assert_problem(post_video(client, clip, style=style_name), 413, "video-too-large", "file")
    assert "6 frames of 64x48" in body["detail"] and "at most 3 frames" in body["detail"], body
    assert body["reason"] == "too-much-work"
    assert queued_videos(client) == before
    monkeypatch.setattr(client.app.state.settings, "video_max_output_megapixels", 0.02)
    job = submit(client, clip, style=style_name)
    client.delete(f"/jobs/{job['id']}")


@pytest.mark.parametrize(
    ("form", "field", "slug"),
    [
        ({"style": "no_such_style"}, "style", "unknown-style"),
        ({}, "style", "validation-error"),  # neither style nor style_image
        ({"size": 4096}, "size", "validation-error"),
        ({"size": 8}, "size", "validation-error"),
        ({"fps": 60}, "fps", "validation-error"),  # more than the clip's 12
        ({"format": "avi"}, "format", "validation-error"),
        ({"smoothing": 1}, "smoothing", "validation-error"),
        ({"colour": "red"}, "colour", "validation-error"),
    ],
)
def test_bad_fields_name_the_field(client, style_name, form, field, slug):
    form = {"style": style_name, **form} if field != "style" or form else form
    before = queued_videos(client)
    assert_problem(post_video(client, make_clip(frames=6, audio=False), **form), 422, slug, field)
    assert queued_videos(client) == before


def test_both_style_and_style_image_is_one_problem(client, style_name):
    resp = post_video(client, make_clip(frames=4), painting=encode(stripes(32, 32)), style=style_name)
    body = assert_problem(resp, 422, "validation-error", "style")
    assert {e["field"] for e in body["errors"]} == {"style", "style_image"}


def test_docs_show_codec_limits_and_bounds(client):
    doc = client.get("/openapi.json").json()
    operation = doc["paths"]["/jobs/stylize-video"]["post"]
    settings = client.app.state.settings
    assert "H.264" in operation["description"]
    for shown in (
        f"{settings.video_max_bytes:,} bytes",
        f"{settings.video_max_frames:,} frames",
        "pixels per frame",
    ):
        assert shown in operation["description"]
    ref = operation["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    form = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert form["properties"]["size"]["maximum"] == settings.video_max_size
    assert set(form["required"]) == {"file"}
    result = doc["paths"]["/jobs/{job_id}/result"]["get"]["responses"]["200"]["content"]
    assert {"video/mp4", "image/gif", "image/png"} <= set(result)
