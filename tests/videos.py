"""Tiny test clips written with PyAV: a moving square on a gradient, optionally with a sine tone."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np

AUDIO_RATE = 16000


def frame_pixels(index: int, width: int, height: int) -> np.ndarray:
    """H×W×3 uint8: a horizontal gradient with a white square that moves 3 px a frame."""
    img = np.zeros((height, width, 3), np.uint8)
    img[..., 0] = np.linspace(30, 220, width, dtype=np.uint8)[None, :]
    img[..., 2] = np.linspace(200, 40, height, dtype=np.uint8)[:, None]
    side = max(4, min(width, height) // 4)
    left = (index * 3) % max(1, width - side)
    top = height // 3
    img[top : top + side, left : left + side] = 255
    return img


def _tone_stream(out: av.container.OutputContainer, codec: str, rate: int) -> av.AudioStream:
    stream = out.add_stream(codec, rate=rate)
    stream.layout = "mono"
    return stream


def _write_tone(out: av.container.OutputContainer, stream: av.AudioStream, seconds: float) -> None:
    """A 440 Hz tone; streams must all exist before the first packet is muxed, so this comes after."""
    rate = stream.codec_context.sample_rate
    samples = np.arange(int(rate * seconds)) / rate
    tone = (0.3 * np.sin(2 * np.pi * 440 * samples)).astype(np.float32)
    opus = stream.codec_context.name == "libopus"
    chunk, fmt = (960, "flt") if opus else (1024, "fltp")
    for start in range(0, len(tone), chunk):
        part = np.ascontiguousarray(tone[None, start : start + chunk])
        frame = av.AudioFrame.from_ndarray(part, format=fmt, layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)


def make_clip(
    frames: int = 24,
    width: int = 96,
    height: int = 64,
    fps: int = 12,
    *,
    audio: bool = True,
    container: str = "mp4",
    rotation: int = 0,
) -> bytes:
    """An encoded clip: H.264/AAC in MP4 (or ``mov``), VP9/Opus in WebM, or a GIF (no audio)."""
    codec, pix_fmt = {
        "mp4": ("libx264", "yuv420p"),
        "mov": ("libx264", "yuv420p"),
        "webm": ("libvpx-vp9", "yuv420p"),
        "gif": ("gif", "rgb8"),
    }[container]
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        video = out.add_stream(codec, rate=Fraction(fps))
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        if codec == "libx264":
            video.options = {"preset": "ultrafast"}
        if rotation:
            video.set_display_rotation(rotation)  # how phones store portrait clips
        tone = None
        if audio and container != "gif":
            webm = container == "webm"
            tone = _tone_stream(out, "libopus" if webm else "aac", 48000 if webm else AUDIO_RATE)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(frame_pixels(i, width, height), format="rgb24")
            frame.pts = i
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)
        if tone is not None:
            _write_tone(out, tone, frames / fps)
    return buf.getvalue()


def audio_only_mp4(seconds: float = 0.5) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        _write_tone(out, _tone_stream(out, "aac", AUDIO_RATE), seconds)
    return buf.getvalue()


def zero_frame_webm() -> bytes:
    """A WebM whose video track is declared but holds no frame (Matroska keeps the empty track)."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="webm") as out:
        video = out.add_stream("libvpx-vp9", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        _write_tone(out, _tone_stream(out, "libopus", 48000), 0.2)
    return buf.getvalue()


def streams(data: bytes) -> dict[str, object]:
    """What a client checks in a result: decoded frame count and size, audio codec and packets."""
    with av.open(io.BytesIO(data)) as container:
        video = container.streams.video[0]
        codec, time_base = video.codec_context.name, video.time_base
        frames = [(f.width, f.height, f.pts, f.rotation) for f in container.decode(video)]
    with av.open(io.BytesIO(data)) as container:
        audio = container.streams.audio[0] if container.streams.audio else None
        audio_packets = [bytes(p) for p in container.demux(audio) if p.size] if audio is not None else []
        audio_codec = audio.codec_context.name if audio is not None else None
        fmt = container.format.name
    return {
        "format": fmt,
        "codec": codec,
        "frames": len(frames),
        "sizes": {(w, h) for w, h, _, _ in frames},
        "pts": [pts for _, _, pts, _ in frames],
        "rotations": {rotation for _, _, _, rotation in frames},
        "time_base": time_base,
        "audio_codec": audio_codec,
        "audio_packets": audio_packets,
    }
