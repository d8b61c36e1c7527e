"""Cheap checks of an uploaded video before any work is queued: what it is, and whether it is whole.

Opening the container and reading its stream headers costs next to nothing; so does demuxing every
video packet (no decoding: only the packets' sizes and timestamps are read), which gives the exact
frame count and shows a file that ends early. Only the first frame is decoded, to prove the stream
really decodes. Everything is judged on the bytes in memory, so no temporary file is needed.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

import av

RejectReason = Literal[
    "not-video", "truncated", "no-video-stream", "no-frames", "too-long", "too-many-frames", "too-large"
]
ContainerKind = Literal["mp4", "webm", "gif"]

# FFmpeg demuxer names of the containers we accept (MOV and MP4 share one demuxer).
CONTAINERS: dict[str, ContainerKind] = {
    "mov,mp4,m4a,3gp,3g2,mj2": "mp4",
    "matroska,webm": "webm",
    "gif": "gif",
}
ACCEPTED_DESCRIPTION = "MP4, WebM, MOV or GIF"
MP4_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")
EBML_MAGIC = b"\x1a\x45\xdf\xa3"  # Matroska / WebM
GIF_MAGICS = (b"GIF87a", b"GIF89a")
GIF_TRAILER = 0x3B
# A WebM whose packets stop this much before its declared duration was cut short.
DURATION_SLACK_S = 0.25


class VideoRejected(ValueError):
    """The upload cannot be stylized; ``reason`` says which kind of problem it is."""

    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class VideoLimits:
    max_seconds: float
    max_frames: int
    max_pixels: int  # per frame


@dataclass(frozen=True)
class VideoInfo:
    """What the rest of the pipeline needs to know about an accepted video."""

    container: ContainerKind
    codec: str
    width: int
    height: int
    frames: int  # exact: video packets carrying data
    duration_s: float
    fps: Fraction  # average frame rate
    sample_aspect: Fraction | None  # non-square pixels, else None
    audio_codecs: tuple[str, ...] = field(default_factory=tuple)

    def public(self) -> dict[str, object]:
        return {
            "container": self.container,
            "codec": self.codec,
            "width": self.width,
            "height": self.height,
            "frames": self.frames,
            "duration_s": round(self.duration_s, 3),
            "fps": round(float(self.fps), 3),
            "audio": list(self.audio_codecs),
        }


def looks_like_video(data: bytes) -> bool:
    """Leading bytes of an accepted container: such a file that will not open is corrupt, not foreign."""
    return data[4:8] in MP4_BOXES or data.startswith(EBML_MAGIC) or data.startswith(GIF_MAGICS)


def _open(data: bytes) -> av.container.InputContainer:
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        if looks_like_video(data):
            raise VideoRejected(
                "truncated", f"looks like a video but is truncated or corrupt ({exc.__class__.__name__})"
            ) from None
        raise VideoRejected("not-video", f"is not a video; accepted: {ACCEPTED_DESCRIPTION}") from None
    if container.format.name not in CONTAINERS:
        container.close()
        raise VideoRejected(
            "not-video", f"is {container.format.name}, not a video; accepted: {ACCEPTED_DESCRIPTION}"
        )
    return container


def _first_frame_decodes(data: bytes) -> bool:
    """True once one frame decodes; the decoder may need several packets (B-frames) or a flush."""
    with av.open(io.BytesIO(data), mode="r") as container:
        try:
            for packet in container.demux(container.streams.video[0]):
                for _frame in packet.decode():
                    return True
        except av.error.FFmpegError:
            return False
    return False


def _scan_packets(container: av.container.InputContainer, stream: av.VideoStream) -> tuple[int, float, float]:
    """(video frames, video end, end of any stream) in seconds, from the packets alone.

    All streams are read (audio packets are as cheap as video ones) so a file whose audio runs on
    after its last frame is not mistaken for a cut one; a read error means the file is cut.
    """
    frames, video_end, any_end = 0, 0.0, 0.0
    try:
        for packet in container.demux():
            if packet.size == 0 or packet.pts is None or packet.time_base is None:
                continue
            end = float((packet.pts + max(packet.duration or 0, 0)) * packet.time_base)
            any_end = max(any_end, end)
            if packet.stream.index == stream.index:
                frames += 1
                video_end = max(video_end, end)
    except av.error.FFmpegError as exc:
        raise VideoRejected("truncated", f"is truncated or corrupt after {frames} frames ({exc})") from None
    return frames, video_end, any_end


def _frame_rate(stream: av.VideoStream, frames: int, duration_s: float) -> Fraction:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate)
    if frames and duration_s > 0:
        return Fraction(frames / duration_s).limit_denominator(1001)
    return Fraction(25)


def probe_video(data: bytes, limits: VideoLimits) -> VideoInfo:
    """Accept or reject an upload: raises :class:`VideoRejected` with the reason a client should see."""
    container = _open(data)
    kind = CONTAINERS[container.format.name]
    try:
        if not container.streams:
            raise VideoRejected("truncated", "has no readable streams (truncated or corrupt)")
        if not container.streams.video:
            raise VideoRejected("no-video-stream", "has no video stream")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if width < 1 or height < 1:
            raise VideoRejected("no-frames", "has a video stream without a frame size")
        if width * height > limits.max_pixels:
            raise VideoRejected(
                "too-large",
                f"is {width}x{height} = {width * height} pixels a frame; the limit is {limits.max_pixels}",
            )
        declared = stream.frames or 0
        frames, video_end, packets_end = _scan_packets(container, stream)
        if frames == 0:
            raise VideoRejected("no-frames", "has a video stream with zero frames")
        if declared and frames < declared:
            raise VideoRejected("truncated", f"is truncated: {frames} of its {declared} frames are there")
        declared_s = (container.duration or 0) / av.time_base
        if kind == "webm" and declared_s and packets_end + DURATION_SLACK_S < declared_s:
            raise VideoRejected(
                "truncated", f"is truncated: it stops at {packets_end:.2f} s of its {declared_s:.2f} s"
            )
        if kind == "gif" and data[-1] != GIF_TRAILER:
            raise VideoRejected("truncated", "is a truncated GIF (no trailer byte)")
        duration_s = video_end or declared_s
        if duration_s > limits.max_seconds:
            raise VideoRejected(
                "too-long", f"lasts {duration_s:.1f} s; the limit is {limits.max_seconds:g} s"
            )
        if frames > limits.max_frames:
            raise VideoRejected("too-many-frames", f"has {frames} frames; the limit is {limits.max_frames}")
        if not _first_frame_decodes(data):
            raise VideoRejected("truncated", "has frames that do not decode (corrupt)")
        sar = stream.sample_aspect_ratio
        return VideoInfo(
            container=kind,
            codec=stream.codec_context.name,
            width=width,
            height=height,
            frames=frames,
            duration_s=duration_s,
            fps=_frame_rate(stream, frames, duration_s),
            sample_aspect=Fraction(sar) if sar and sar != 1 else None,
            audio_codecs=tuple(a.codec_context.name for a in container.streams.audio),
        )
    finally:
        container.close()
