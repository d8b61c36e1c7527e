"""WS /ws/stylize at the protocol level: frames in, stylized frames out, newest frame wins, clear errors."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from starlette.websockets import WebSocketDisconnect

from tests.images import encode, photo_like


def frame(width: int = 96, height: int = 64, seed: int = 0, fmt: str = "JPEG") -> bytes:
    return encode(photo_like(width, height, seed), fmt, **({"quality": 85} if fmt == "JPEG" else {}))


def receive_frame(ws) -> tuple[dict, Image.Image]:
    """Skip nothing: the next message must be a frame's JSON, then its image."""
    meta = ws.receive_json()
    assert meta["event"] == "frame", meta
    image = Image.open(io.BytesIO(ws.receive_bytes()))
    return meta, image


def test_frames_come_back_stylized_at_their_size(client):
    with client.websocket_connect("/ws/stylize?style=starry_night&format=webp") as ws:
        ready = ws.receive_json()
        assert ready["event"] == "ready" and ready["style"] == "starry_night"
        assert ready["format"] == "webp"
        ws.send_bytes(frame(96, 64))
        meta, image = receive_frame(ws)
        assert image.format == "WEBP" and image.size == (96, 64)
        assert (meta["seq"], meta["width"], meta["height"]) == (1, 96, 64)
        assert meta["timings_ms"]["infer"] > 0
        assert image.convert("RGB").tobytes() != photo_like(96, 64).tobytes()  # it was painted


def test_frames_larger_than_the_live_limit_are_shrunk(client, settings):
    side = settings.live_max_side * 2
    with client.websocket_connect("/ws/stylize?style=starry_night") as ws:
        ws.receive_json()
        ws.send_bytes(frame(side, side // 2))
        _, image = receive_frame(ws)
        assert image.format == "JPEG"
        assert image.size == (settings.live_max_side, settings.live_max_side // 2)


def test_newest_frame_wins_when_the_server_falls_behind(client):
    """A burst of frames: every one is either stylized or dropped, the last one always comes back."""
    burst = [frame(256, 192, seed=i) for i in range(12)]
    with client.websocket_connect("/ws/stylize?style=starry_night") as ws:
        ws.receive_json()
        for data in burst:
            ws.send_bytes(data)
        seqs, last = [], None
        while not seqs or seqs[-1] != len(burst):
            last, _ = receive_frame(ws)
            seqs.append(last["seq"])
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # in order, no repeats
    assert last["received"] == len(burst)
    assert len(seqs) + last["dropped"] == len(burst)  # nothing queued beyond the newest frame
    assert last["dropped"] > 0, "a 12-frame burst at 256 px should outrun the model"


def test_bad_frames_get_an_error_and_the_stream_goes_on(client):
    with client.websocket_connect("/ws/stylize?style=starry_night") as ws:
        ws.receive_json()
        ws.send_bytes(b"this is not an image")
        error = ws.receive_json()
        assert error["event"] == "error"
        problem = error["problem"]
        assert problem["status"] == 415 and problem["field"] == "frame"
        assert problem["type"] == "/problems/unsupported-media-type"

        ws.send_bytes(frame()[:200])  # a truncated JPEG
        truncated = ws.receive_json()["problem"]
        assert truncated["status"] == 422 and truncated["field"] == "frame"

        ws.send_text("hello")
        assert ws.receive_json()["problem"]["detail"].startswith("Send frames as binary messages")

        ws.send_bytes(frame())
        _, image = receive_frame(ws)
        assert image.size == (96, 64)


def test_oversized_frame_is_refused_before_decoding(client, settings):
    with client.websocket_connect("/ws/stylize?style=starry_night") as ws:
        ws.receive_json()
        ws.send_bytes(b"\xff\xd8\xff" + b"\0" * settings.live_max_frame_bytes)
        problem = ws.receive_json()["problem"]
        assert problem["status"] == 413 and problem["field"] == "frame"


@pytest.mark.parametrize(
    ("query", "field", "reason"),
    [
        ("style=nope", "style", "Unknown style 'nope'"),
        ("", "style", "Unknown style ''"),
        ("style=starry_night&strength=2", "strength", "'strength' must be between 0 and 1."),
        ("style=starry_night&format=gif", "format", "'format' must be one of"),
        ("style=starry_night&colour=1", "colour", "Unknown query parameter(s): colour"),
        ("style=starry_night&style=great_wave", "style", "'style' was sent more than once"),
    ],
)
def test_bad_query_sends_a_problem_then_closes_with_the_reason(client, query, field, reason):
    with client.websocket_connect(f"/ws/stylize?{query}") as ws:
        error = ws.receive_json()
        assert error["event"] == "error" and error["problem"]["field"] == field
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 1008
    assert closed.value.reason.startswith(reason)


def test_server_keeps_serving_after_clients_vanish_mid_frame(client):
    for _ in range(3):
        with client.websocket_connect("/ws/stylize?style=starry_night") as ws:
            ws.receive_json()
            ws.send_bytes(frame(256, 192))
        # left without reading the answer
    assert client.get("/healthz").json() == {"status": "ok"}
    with client.websocket_connect("/ws/stylize?style=starry_night") as ws:
        ws.receive_json()
        ws.send_bytes(frame())
        assert receive_frame(ws)[1].size == (96, 64)
