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


# --- colour checks ------------------------------------------------------------------------------

COLOUR_BARS = np.array([[200, 30, 30], [30, 180, 60], [40, 60, 200], [230, 220, 40]], np.uint8)


def bars_frame(width: int, height: int, bars: np.ndarray = COLOUR_BARS) -> np.ndarray:
    """H×W×3 uint8: one vertical bar per colour, equally wide."""
    return np.repeat(np.repeat(bars[None], height, axis=0), width // len(bars), axis=1)


def make_lossless_clip(path, rgb: np.ndarray, frames: int = 3) -> None:
    """An SDR H.264 MP4 (4:4:4, lossless), ``rgb`` in every frame: what comes out is the pipeline's doing."""
    height, width = rgb.shape[:2]
    with av.open(str(path), mode="w") as out:
        video = out.add_stream("libx264", rate=10, options={"qp": "0"})
        video.width, video.height, video.pix_fmt = width, height, "yuv444p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))


# --- HDR clips, made the way a phone's are coded (BT.2100), from sRGB frames ------------------------

SRGB_TO_BT2020 = np.array(
    [[0.6274, 0.3293, 0.0433], [0.0691, 0.9195, 0.0114], [0.0164, 0.0880, 0.8956]]
)  # BT.2087


def hdr_signal(srgb: np.ndarray, transfer: str, white_nits: float = 203.0) -> np.ndarray:
    """sRGB uint8 to the HLG or PQ signal (0..1, BT.2020) that shows it with SDR white at ``white_nits``.

    Written from the standards (BT.2100 inverse OOTF and OETF, ST 2084 inverse EOTF), independently
    of models/hdr.py, so that decoding a clip made with it checks that module rather than echoes it.
    """
    v = srgb.astype(np.float64) / 255.0
    linear = np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)
    nits = linear @ SRGB_TO_BT2020.T * white_nits
    if transfer == "pq":
        m1, m2, c1, c2, c3 = 2610 / 16384, 2523 / 32, 3424 / 4096, 2413 / 128, 2392 / 128
        y = (nits / 10000.0) ** m1
        return ((c1 + c2 * y) / (1 + c3 * y)) ** m2
    a, b, c = 0.17883277, 0.28466892, 0.55991073
    luma = np.maximum(nits @ np.array([0.2627, 0.6780, 0.0593]), 1e-9)[..., None]
    scene = nits / (1000.0 * (luma / 1000.0) ** (0.2 / 1.2))  # inverse OOTF, system gamma 1.2
    scene = np.clip(scene, 0.0, 1.0)
    return np.where(scene <= 1 / 12, np.sqrt(3 * scene), a * np.log(np.maximum(12 * scene - b, 1e-9)) + c)


def make_hdr_clip(
    path, srgb: np.ndarray, transfer: str, frames: int = 3, signal: np.ndarray | None = None
) -> None:
    """A 10-bit H.264 MP4 tagged BT.2020 + HLG/PQ, every frame ``srgb`` coded as HDR (or ``signal`` as is)."""
    from av.video.reformatter import ColorRange, Colorspace

    height, width = srgb.shape[:2]
    coded = hdr_signal(srgb, transfer) if signal is None else signal
    words = np.round(np.clip(coded, 0, 1) * 65535).astype(np.uint16)
    trc = {"hlg": 18, "pq": 16}[transfer]
    with av.open(str(path), mode="w") as out:
        video = out.add_stream("libx264", rate=10, options={"qp": "0"})
        video.width, video.height, video.pix_fmt = width, height, "yuv444p10le"
        context = video.codec_context
        context.colorspace, context.color_primaries, context.color_trc = 9, 9, trc
        context.color_range = ColorRange.MPEG
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(words, format="rgb48le").reformat(
                format="yuv444p10le", dst_colorspace=Colorspace.BT2020, dst_color_range=ColorRange.MPEG
            )
            frame.colorspace, frame.color_primaries, frame.color_trc = 9, 9, trc
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
