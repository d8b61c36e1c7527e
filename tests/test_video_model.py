"""The video core without the service: probing, the streaming frame pipeline, flicker and its damping."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from models.flicker import FlickerMeter, TemporalBlend
from models.transformer import build, stylize
from models.video import RenderOptions, expected_frames, output_size, render_stylized_video
from models.video_probe import VideoLimits, VideoRejected, probe_video
from tests.videos import (
    COLOUR_BARS,
    audio_only_mp4,
    bars_frame,
    make_clip,
    make_hdr_clip,
    make_lossless_clip,
    streams,
    zero_frame_webm,
)

LIMITS = VideoLimits(max_seconds=60, max_frames=1800, max_pixels=1920 * 1080)


@pytest.fixture(scope="module")
def network_frames(one_torch_thread):
    """A freshly built two-style network (untrained weights are enough to test the plumbing)."""
    torch.manual_seed(0)
    model = build("medium", num_styles=2).eval().requires_grad_(False)
    style = torch.tensor([[0.0, 1.0]])
    calls: list[int] = []

    def run(frames: torch.Tensor) -> torch.Tensor:
        calls.append(frames.shape[0])
        with torch.inference_mode():
            return stylize(model, frames, style)

    run.calls = calls  # type: ignore[attr-defined]
    return run


def render(data: bytes, run, tmp_path, **options) -> tuple[dict, dict]:
    src, dst = tmp_path / "in", tmp_path / "out"
    src.write_bytes(data)
    info = probe_video(data, LIMITS)
    even = options.get("output", "mp4") != "gif"
    width, height = output_size(info.width, info.height, options.pop("longest", 64), even=even)
    report = render_stylized_video(src, dst, run, RenderOptions(width, height, **options))
    return report.public(), streams(dst.read_bytes())


# --- probing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("container", ["mp4", "mov", "webm", "gif"])
def test_probe_reads_what_the_pipeline_needs(container):
    info = probe_video(make_clip(frames=18, fps=10, container=container), LIMITS)  # GIF: 1/100 s steps
    assert (info.width, info.height, info.frames) == (96, 64, 18)
    assert info.fps == 10 and info.duration_s == pytest.approx(1.8, abs=0.05)
    assert info.audio_codecs == (() if container == "gif" else ("opus",) if container == "webm" else ("aac",))


def _cut(data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)]


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("text", b"just some text, not a video at all\n" * 20, "not-video"),
        ("png image", b"\x89PNG\r\n\x1a\n" + b"\0" * 200, "not-video"),
        ("mp4 cut in half", _cut(make_clip(), 0.5), "truncated"),
        ("webm cut", _cut(make_clip(frames=30, container="webm", audio=False), 0.6), "truncated"),
        ("gif cut", _cut(make_clip(container="gif"), 0.7), "truncated"),
        ("audio only", audio_only_mp4(), "no-video-stream"),
        ("zero frames", zero_frame_webm(), "no-frames"),
    ],
)
def test_probe_rejects_bad_input_with_its_reason(name, data, reason):
    with pytest.raises(VideoRejected) as rejected:
        probe_video(data, LIMITS)
    assert rejected.value.reason == reason, (name, str(rejected.value))


def test_probe_enforces_every_limit():
    clip = make_clip(frames=20, fps=10, audio=False)
    with pytest.raises(VideoRejected, match=r"lasts 2\.0 s") as e:
        probe_video(clip, VideoLimits(max_seconds=1.5, max_frames=100, max_pixels=10**6))
    assert e.value.reason == "too-long"
    with pytest.raises(VideoRejected, match="20 frames") as e:
        probe_video(clip, VideoLimits(max_seconds=60, max_frames=19, max_pixels=10**6))
    assert e.value.reason == "too-many-frames"
    with pytest.raises(VideoRejected, match="96x64") as e:
        probe_video(clip, VideoLimits(max_seconds=60, max_frames=100, max_pixels=96 * 64 - 1))
    assert e.value.reason == "too-large"


def test_output_size_keeps_aspect_and_even_sides():
    assert output_size(96, 64, 48, even=True) == (48, 32)
    assert output_size(1920, 1080, 512, even=True) == (512, 288)
    w, h = output_size(97, 61, 80, even=True)
    assert w % 2 == 0 and h % 2 == 0 and abs(w / h - 97 / 61) < 0.05
    assert output_size(97, 61, 80, even=False) == (80, 50)
    assert expected_frames(30, 2.5, Fraction(6), Fraction(12)) == 15
    assert expected_frames(30, 2.5, None, Fraction(12)) == 30


# --- the pipeline -------------------------------------------------------------------------------


def test_mp4_keeps_frames_timestamps_size_and_audio_packets(network_frames, tmp_path):
    clip = make_clip(frames=26, width=96, height=64, fps=12)
    network_frames.calls.clear()
    report, out = render(clip, network_frames, tmp_path, longest=80, batch_size=4)
    source = streams(clip)
    assert out["format"].startswith("mov,mp4") and out["codec"] == "h264"
    assert out["frames"] == source["frames"] == report["frames"] == 26
    assert out["sizes"] == {(80, 54)}  # 80 x 53.3 rounded to even sides
    # Same instants: the frame rate (and any variable timing) is the input's.
    assert [p * out["time_base"] for p in out["pts"]] == [p * source["time_base"] for p in source["pts"]]
    assert out["audio_codec"] == "aac"
    assert out["audio_packets"] == source["audio_packets"]  # copied bit for bit
    assert report["audio"] == ["aac: copied"]
    # Streamed in batches of at most 4 frames: never the whole clip at once.
    assert max(network_frames.calls) == 4 and sum(network_frames.calls) == 26


def test_gif_round_trip_and_webm_to_mp4(network_frames, tmp_path):
    report, out = render(make_clip(frames=10, container="gif"), network_frames, tmp_path, output="gif")
    assert out["format"] == "gif" and out["frames"] == 10 and out["sizes"] == {(64, 43)}
    assert report["media_type"] == "image/gif"
    report, out = render(make_clip(frames=12, container="webm"), network_frames, tmp_path)
    assert out["codec"] == "h264" and out["frames"] == 12
    assert out["audio_codec"] == "opus" and report["audio"] == ["opus: copied"]


def test_a_phone_rotation_flag_is_kept(network_frames, tmp_path):
    _, out = render(make_clip(frames=6, rotation=90), network_frames, tmp_path)
    assert out["rotations"] == {90} and out["sizes"] == {(64, 44)}


def _offered_frames(data: bytes, run, tmp_path, **options) -> tuple[list[tuple[int, Image.Image]], Path]:
    """Render, keeping (frames done, the newest frame as offered) at each progress report."""
    src, dst = tmp_path / "in", tmp_path / "out"
    src.write_bytes(data)
    info = probe_video(data, LIMITS)
    width, height = output_size(info.width, info.height, 64, even=options.get("output", "mp4") != "gif")
    offered: list[tuple[int, Image.Image]] = []

    def keep(done: int, total: int, fps: float, newest) -> None:
        offered.append((done, newest()))

    render_stylized_video(src, dst, run, RenderOptions(width, height, **options), on_progress=keep)
    return offered, dst


def test_progress_offers_the_newest_output_frame_as_players_show_it(network_frames, tmp_path):
    offered, dst = _offered_frames(make_clip(frames=10), network_frames, tmp_path, batch_size=4)
    assert [done for done, _ in offered] == [4, 8, 10]
    with av.open(str(dst)) as container:
        last = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)][-1]
    newest = np.asarray(offered[-1][1], np.float32)
    assert newest.shape == last.shape  # 64x44, as encoded
    assert np.abs(newest - last).mean() < 4.0  # the frame itself (within H.264's loss)

    # A portrait phone clip (landscape frames plus a display flag) is offered upright, as players
    # show the result; a GIF result carries no flag, so neither is its preview turned.
    offered, _ = _offered_frames(make_clip(frames=6, rotation=90), network_frames, tmp_path)
    assert {image.size for _, image in offered} == {(44, 64)}
    offered, _ = _offered_frames(make_clip(frames=6, rotation=90), network_frames, tmp_path, output="gif")
    assert {image.size for _, image in offered} == {(64, 43)}


@pytest.mark.parametrize(("width", "height"), [(96, 48), (48, 96)])
def test_colours_come_back_as_sent_and_the_stream_says_how(tmp_path, width, height):
    """Untagged, players guess the YUV matrix from the size (Chromium: BT.709 for a portrait 404x720)."""
    bars = COLOUR_BARS
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mp4"
    make_lossless_clip(src, bars_frame(width, height))
    render_stylized_video(src, dst, lambda frames: frames, RenderOptions(width, height, smoothing=0.0))
    with av.open(str(dst)) as container:
        context = container.streams.video[0].codec_context
        tags = (context.colorspace, context.color_primaries, context.color_trc, context.color_range)
        assert tags == (6, 1, 1, 1)  # BT.601 matrix, BT.709 (= sRGB) primaries and transfer, limited range
        shown = next(container.decode(video=0)).to_ndarray(format="rgb24")  # decoded as the tags say
    centres = shown[height // 2, width // 8 :: width // 4].astype(int)
    assert np.abs(centres - bars).max() <= 6, centres.tolist()


@pytest.mark.parametrize("transfer", ["hlg", "pq"])
def test_hdr_clips_are_tone_mapped_to_the_colours_they_show(tmp_path, transfer):
    """A phone's HDR clip (BT.2020, HLG or PQ) read as SDR comes out flat; it must show as coded."""
    bars = np.array([[200, 30, 30], [30, 180, 60], [40, 60, 200], [128, 128, 128]], np.uint8)
    rgb = np.repeat(np.repeat(bars[None], 32, axis=0), 24, axis=1)
    src, dst = tmp_path / "hdr.mp4", tmp_path / "out.mp4"
    make_hdr_clip(src, rgb, transfer)
    report = render_stylized_video(src, dst, lambda frames: frames, RenderOptions(96, 32, smoothing=0.0))
    assert report.public()["colour"] == transfer
    with av.open(str(dst)) as container:
        shown = next(container.decode(video=0)).to_ndarray(format="rgb24")
    centres = shown[16, 12::24].astype(int)
    assert np.abs(centres - bars).max() <= 6, centres.tolist()


def test_hdr_highlights_roll_off_instead_of_clipping(tmp_path):
    """Above SDR white an HLG clip keeps detail: brighter in, brighter out, up to its 1000-nit peak."""
    levels = np.array([0.75, 0.82, 0.9, 1.0])  # HLG signal: reference white (203 nits) .. peak
    signal = np.repeat(np.repeat(levels[None, :, None], 32, axis=0), 24, axis=1).repeat(3, axis=2)
    src, dst = tmp_path / "hdr.mp4", tmp_path / "out.mp4"
    make_hdr_clip(src, np.zeros((32, 96, 3), np.uint8), "hlg", signal=signal)
    render_stylized_video(src, dst, lambda frames: frames, RenderOptions(96, 32, smoothing=0.0))
    with av.open(str(dst)) as container:
        grey = next(container.decode(video=0)).to_ndarray(format="rgb24")[16, 12::24, 1].astype(int)
    assert 230 <= grey[0] < grey[1] < grey[2] < grey[3] == 255, grey.tolist()


def test_lower_fps_drops_frames_on_a_grid(network_frames, tmp_path):
    report, out = render(make_clip(frames=24, fps=12), network_frames, tmp_path, fps=Fraction(6))
    assert out["frames"] == report["frames"] == 12
    times = [p * out["time_base"] for p in out["pts"]]
    assert times == [Fraction(i, 6) for i in range(12)]


def test_an_error_in_the_middle_stops_the_run(network_frames, tmp_path):
    def stop_after_two_batches(done: int, total: int, fps: float, newest) -> None:
        if done >= 8:
            raise RuntimeError("stop")

    src = tmp_path / "in"
    src.write_bytes(make_clip(frames=24))
    with pytest.raises(RuntimeError, match="stop"):
        render_stylized_video(
            src, tmp_path / "out", network_frames, RenderOptions(64, 42), on_progress=stop_after_two_batches
        )


# --- flicker ------------------------------------------------------------------------------------


def test_blend_damps_flicker_where_the_input_is_still_and_follows_motion():
    torch.manual_seed(1)
    still = torch.rand(1, 3, 32, 32)
    blend, raw, damped = TemporalBlend(0.8), FlickerMeter(), FlickerMeter()
    for _ in range(20):  # a noisy network on a still input: the worst case for flicker
        noisy = (still + 0.1 * torch.randn_like(still)).clamp(0, 1)
        raw.add(noisy)
        damped.add(blend(still, noisy))
    assert damped.mean < 0.5 * raw.mean

    moved = 1.0 - still  # every pixel changed a lot: the new frame passes through untouched
    stylized = torch.rand(1, 3, 32, 32)
    assert torch.equal(blend(moved, stylized), stylized)
    assert torch.equal(TemporalBlend(0.0)(still, stylized), stylized)
