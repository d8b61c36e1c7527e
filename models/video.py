"""Stylize a video frame by frame, streaming: decode -> batch of N frames -> network -> encode.

Only one batch of decoded frames (plus the previous frame, for the temporal blend) is ever in
memory, whatever the length of the clip. Every frame is resized to the same size and goes through
the same padding and normalisation (the frame stylizer's), so nothing changes between frames but
the picture. Timestamps are the input's: frame count, frame rate (even a variable one) and
duration are kept, and so is a phone's rotation flag (MP4/WebM out). Audio packets are copied
into the output untouched when its container can carry their codec, and re-encoded to AAC
otherwise. GIF in, GIF out (one fixed palette, no dithering, so the palette does not flicker).

Output video: H.264 in MP4 when the bundled FFmpeg has libx264 (PyAV's wheels do), VP9 in WebM
otherwise; both play in every current browser.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import BinaryIO, Literal

import av
import numpy as np
import torch
from av.video.reformatter import ColorRange, Colorspace
from PIL import Image
from torch import Tensor

from models import hdr
from models.flicker import FlickerMeter, TemporalBlend

OutputFormat = Literal["mp4", "gif"]
FrameStylizer = Callable[[Tensor], Tensor]  # N×3×H×W in [0, 1] -> the same shape, stylized
# frames done, total, frames/s, and the newest output frame as players will show it (rendered only if
# called: for previews); may raise to stop the run
ProgressCallback = Callable[[int, int, float, Callable[[], Image.Image]], None]

# Audio codecs each output container takes as they are (anything else is re-encoded).
AUDIO_COPY = {
    "mp4": {"aac", "mp3", "opus", "flac", "alac", "ac3", "eac3"},
    "webm": {"opus", "vorbis"},
}
REENCODE_AUDIO = {"mp4": "aac", "webm": "libopus"}
H264_OPTIONS = {"crf": "20", "preset": "veryfast"}
VP9_OPTIONS = {"crf": "32", "b": "0", "deadline": "realtime", "cpu-used": "8", "row-mt": "1"}
GIF_COLORS = 256
# ITU-T H.273 codes: BT.709 (primaries and transfer; sRGB shares its primaries), BT.601's matrix
BT709, MATRIX_BT601 = 1, 6


@dataclass(frozen=True)
class VideoEncoder:
    codec: str
    container: str  # FFmpeg muxer name
    extension: str
    media_type: str
    pix_fmt: str
    options: dict[str, str]
    even_sides: bool  # 4:2:0 chroma needs even width and height


H264 = VideoEncoder("libx264", "mp4", "mp4", "video/mp4", "yuv420p", H264_OPTIONS, True)
VP9 = VideoEncoder("libvpx-vp9", "webm", "webm", "video/webm", "yuv420p", VP9_OPTIONS, True)
GIF = VideoEncoder("gif", "gif", "gif", "image/gif", "pal8", {}, False)
VIDEO_MEDIA_TYPES = tuple(e.media_type for e in (H264, VP9, GIF))


def browser_video_encoder() -> VideoEncoder:
    """H.264/MP4 when this FFmpeg build can encode it, else VP9/WebM."""
    return H264 if "libx264" in av.codecs_available else VP9


def encoder_for(output: OutputFormat) -> VideoEncoder:
    return GIF if output == "gif" else browser_video_encoder()


def output_size(width: int, height: int, longest: int, *, even: bool) -> tuple[int, int]:
    """(w, h) with the longer side ``longest`` and the input's aspect; even sides for 4:2:0 codecs.

    Rounding to even moves the aspect ratio by at most one pixel.
    """
    scale = longest / max(width, height)
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    if even:
        w, h = max(2, w + (w % 2)), max(2, h + (h % 2))
    return w, h


@dataclass(frozen=True)
class RenderOptions:
    width: int
    height: int
    output: OutputFormat = "mp4"
    fps: Fraction | None = None  # None: keep every frame and its timestamp
    smoothing: float = 0.5  # TemporalBlend strength, 0: off
    batch_size: int = 4


@dataclass
class RenderReport:
    frames: int = 0
    width: int = 0
    height: int = 0
    seconds: float = 0.0
    codec: str = ""
    media_type: str = ""
    audio: list[str] = field(default_factory=list)  # per input audio stream: copied / re-encoded / dropped
    input_flicker: float = 0.0  # mean |frame_t - frame_t-1| of the resized input, 0..1
    network_flicker: float = 0.0  # the same for the network's raw output
    output_flicker: float = 0.0  # and for what was encoded (after the temporal blend)
    colour: str = "sdr"  # "hlg" or "pq": tone-mapped HDR; "bt2020" or "p3": wide-gamut SDR, converted

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def public(self) -> dict[str, object]:
        ratio = self.output_flicker / self.input_flicker if self.input_flicker > 0 else None
        raw_ratio = self.network_flicker / self.input_flicker if self.input_flicker > 0 else None
        return {
            "frames": self.frames,
            "width": self.width,
            "height": self.height,
            "seconds": round(self.seconds, 3),
            "frames_per_s": round(self.frames_per_s, 3),
            "codec": self.codec,
            "media_type": self.media_type,
            "audio": self.audio,
            "colour": self.colour,
            "flicker": {
                "input": round(self.input_flicker, 5),
                "network": round(self.network_flicker, 5),
                "output": round(self.output_flicker, 5),
                "network_over_input": None if raw_ratio is None else round(raw_ratio, 3),
                "output_over_input": None if ratio is None else round(ratio, 3),
            },
        }


class _AudioCopy:
    """Remux one audio stream's packets unchanged."""

    label = "copied"

    def __init__(self, out: av.container.OutputContainer, source: av.AudioStream) -> None:
        self.out = out
        self.stream = out.add_stream_from_template(source)

    def feed(self, packet: av.Packet) -> None:
        if packet.dts is None:  # the demuxer's end-of-stream marker
            return
        packet.stream = self.stream
        self.out.mux(packet)

    def close(self) -> None:
        pass


class _AudioReencode:
    """Decode one audio stream and encode it with a codec the output container takes."""

    def __init__(self, out: av.container.OutputContainer, source: av.AudioStream, codec: str) -> None:
        self.out = out
        rate = source.codec_context.sample_rate or 48000
        if codec == "libopus" and rate not in (8000, 12000, 16000, 24000, 48000):
            rate = 48000
        self.stream = out.add_stream(codec, rate=rate)
        layout = source.codec_context.layout.name if source.codec_context.layout else "stereo"
        self.stream.layout = layout if source.codec_context.channels <= 2 else "stereo"
        self.resampler = av.AudioResampler(
            format=self.stream.format.name, layout=self.stream.layout, rate=rate
        )
        self.label = f"re-encoded to {self.stream.codec_context.name} (the container cannot carry it)"

    def _encode(self, frames: list[av.AudioFrame]) -> None:
        for frame in frames:
            frame.pts = None
            for packet in self.stream.encode(frame):
                self.out.mux(packet)

    def feed(self, packet: av.Packet) -> None:
        for frame in packet.decode():
            self._encode(self.resampler.resample(frame))

    def close(self) -> None:
        self._encode(self.resampler.resample(None))
        for packet in self.stream.encode(None):
            self.out.mux(packet)


class _GifPalette:
    """One palette for the whole GIF, chosen from the first frame: a per-frame palette would flicker."""

    def __init__(self) -> None:
        self.reference: Image.Image | None = None
        self.argb: np.ndarray | None = None

    def frame(self, rgb: np.ndarray) -> av.VideoFrame:
        img = Image.fromarray(rgb)
        if self.reference is None:
            self.reference = img.quantize(GIF_COLORS, method=Image.Quantize.MEDIANCUT)
            palette = np.asarray(self.reference.getpalette()[: 3 * GIF_COLORS], np.uint8).reshape(-1, 3)
            palette = np.pad(palette, ((0, GIF_COLORS - len(palette)), (0, 0)))
            self.argb = np.concatenate([np.full((GIF_COLORS, 1), 255, np.uint8), palette], axis=1)
        indices = img.quantize(palette=self.reference, dither=Image.Dither.NONE)
        return av.VideoFrame.from_ndarray((np.asarray(indices), self.argb), format="pal8")


class _Timestamps:
    """Output pts: the input's own (VFR-safe), or a constant ``fps`` grid that drops frames."""

    def __init__(self, source: av.VideoStream, fps: Fraction | None) -> None:
        self.fps = fps
        rate = Fraction(source.average_rate or source.guessed_rate or 25)
        self.time_base = Fraction(1) / fps if fps else Fraction(source.time_base or Fraction(1) / rate)
        self.frame_ticks = max(1, round(1 / (rate * self.time_base))) if not fps else 1
        self.start: float | None = None
        self.next_slot = 0
        self.last_pts: int | None = None
        self.index = 0

    def pts_for(self, frame: av.VideoFrame) -> int | None:
        """The output pts of this decoded frame, or None when the fps grid drops it."""
        index, self.index = self.index, self.index + 1
        if self.fps:
            t = float(frame.time) if frame.time is not None else index / float(self.fps)
            if self.start is None:
                self.start = t
            slot = int((t - self.start) * self.fps + 1e-6)
            if slot < self.next_slot:
                return None
            self.next_slot = slot + 1
            pts = slot
        else:
            pts = frame.pts if frame.pts is not None else index * self.frame_ticks
        if self.last_pts is not None and pts <= self.last_pts:  # encoders need strictly increasing pts
            pts = self.last_pts + 1
        self.last_pts = pts
        return pts


def to_tagged_yuv(rgb: np.ndarray, pix_fmt: str) -> av.VideoFrame:
    """An sRGB frame as limited-range YUV with the BT.601 matrix, tagged so (primaries BT.709 = sRGB's).

    Left to itself the RGB-to-YUV step uses BT.601 and tags nothing, and players guess from the size:
    Chromium reads an untagged 1280x720 or a portrait 404x720 clip as BT.709, and reds and greens
    came back shifted by up to 21 levels. Tagged, every player decodes it as made. BT.601's matrix
    rather than BT.709's: measured in Chromium, a tagged BT.709 clip lost up to 8 levels of blue,
    the BT.601 one matched the frames at every size (README, "Video colours").
    """
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
        format=pix_fmt, dst_colorspace=Colorspace.ITU601, dst_color_range=ColorRange.MPEG
    )
    _tag_as_written(frame)
    return frame


def _tag_as_written(target: av.VideoFrame | av.video.codeccontext.VideoCodecContext) -> None:
    """The colour tags of what :func:`to_tagged_yuv` writes, on a frame or on the stream's encoder."""
    target.colorspace, target.color_primaries, target.color_trc = MATRIX_BT601, BT709, BT709
    target.color_range = ColorRange.MPEG


def _to_rgb(frame: av.VideoFrame, width: int, height: int) -> np.ndarray:
    """H×W×3 uint8 sRGB at the working size: the same resize for every frame (Lanczos down, bicubic
    up); HDR and wide-gamut frames are tone-mapped and converted first (models/hdr.py)."""
    shrinking = width * height < frame.width * frame.height
    interpolation = "LANCZOS" if shrinking else "BICUBIC"
    if hdr.needs_conversion(frame.color_trc, frame.color_primaries):
        return hdr.frame_to_srgb(frame, width, height, interpolation)
    if (frame.width, frame.height) == (width, height):
        return frame.to_ndarray(format="rgb24")
    resized = frame.reformat(width=width, height=height, format="rgb24", interpolation=interpolation)
    return resized.to_ndarray()


def expected_frames(frames: int, duration_s: float, fps: Fraction | None, source_fps: Fraction) -> int:
    """Frames the output will have: all of them, or about duration × fps when fps drops some."""
    if not fps or fps >= source_fps:
        return frames
    return max(1, min(frames, round(duration_s * float(fps))))


def _as_shown(rgb: np.ndarray, rotation: int) -> Image.Image:
    """An output frame turned as a player turns it (the display flag rotates counterclockwise)."""
    image = Image.fromarray(rgb)
    return image.rotate(rotation, expand=True) if rotation else image


def display_rotation(source: str | Path) -> int:
    """Degrees a player turns the picture (phones store portrait clips as landscape plus this flag)."""
    with av.open(str(source), mode="r") as container:
        for frame in container.decode(video=0):
            return int(frame.rotation or 0)
    return 0


class _Renderer:
    """One run of the pipeline: owns the containers, the batch and the metrics."""

    def __init__(
        self,
        src: av.container.InputContainer,
        out: av.container.OutputContainer,
        stylize: FrameStylizer,
        options: RenderOptions,
        encoder: VideoEncoder,
        total: int,
        on_progress: ProgressCallback | None,
        rotation: int = 0,
    ) -> None:
        self.src, self.out, self.stylize, self.options = src, out, stylize, options
        self.total, self.on_progress = total, on_progress
        self.video_in = src.streams.video[0]
        self.video_in.thread_type = "AUTO"
        self.report = RenderReport(
            width=options.width, height=options.height, codec=encoder.codec, media_type=encoder.media_type
        )
        self.clock = _Timestamps(self.video_in, options.fps)
        self.video_out = self._add_video_stream(encoder)
        self.rotation = rotation if encoder is not GIF else 0
        if self.rotation:  # the same display flag: players turn it the same way
            self.video_out.set_display_rotation(rotation)
        self.audio = self._add_audio_streams(encoder)
        self.palette = _GifPalette() if encoder is GIF else None
        self.blend = TemporalBlend(options.smoothing)
        self.meters = (FlickerMeter(), FlickerMeter(), FlickerMeter())  # input, network, output
        self.batch: list[tuple[np.ndarray, int]] = []
        self.started = time.perf_counter()

    def _add_video_stream(self, encoder: VideoEncoder) -> av.VideoStream:
        rate = self.options.fps or Fraction(self.video_in.average_rate or self.video_in.guessed_rate or 25)
        stream = self.out.add_stream(encoder.codec, rate=rate, options=dict(encoder.options))
        stream.width, stream.height = self.options.width, self.options.height
        stream.pix_fmt = encoder.pix_fmt
        stream.codec_context.time_base = self.clock.time_base
        sar = self.video_in.sample_aspect_ratio
        if sar and sar != 1 and encoder is not GIF:
            stream.codec_context.sample_aspect_ratio = sar
        if encoder is not GIF:  # say what the frames are, so no player has to guess (see to_tagged_yuv)
            _tag_as_written(stream.codec_context)
        return stream

    def _add_audio_streams(self, encoder: VideoEncoder) -> dict[int, _AudioCopy | _AudioReencode]:
        audio: dict[int, _AudioCopy | _AudioReencode] = {}
        for source in self.src.streams.audio:
            if encoder is GIF:
                self.report.audio.append(f"{source.codec_context.name}: dropped (GIF has no sound)")
                continue
            codec = source.codec_context.name
            if codec in AUDIO_COPY[encoder.container]:
                audio[source.index] = _AudioCopy(self.out, source)
            else:
                audio[source.index] = _AudioReencode(self.out, source, REENCODE_AUDIO[encoder.container])
            self.report.audio.append(f"{codec}: {audio[source.index].label}")
        return audio

    def run(self) -> RenderReport:
        for packet in self.src.demux(self.video_in, *self.src.streams.audio):
            if packet.stream.index in self.audio:
                self.audio[packet.stream.index].feed(packet)
                continue
            if packet.stream.index != self.video_in.index:
                continue
            for frame in packet.decode():
                pts = self.clock.pts_for(frame)
                if pts is None:
                    continue
                colour = hdr.colour_name(frame.color_trc, frame.color_primaries)
                self.report.colour = colour or self.report.colour
                self.batch.append((_to_rgb(frame, self.options.width, self.options.height), pts))
                if len(self.batch) >= self.options.batch_size:
                    self._flush_batch()
        self._flush_batch()
        self._mux(self.video_out.encode(None))
        for track in self.audio.values():
            track.close()
        return self._finish()

    def _mux(self, packets: list[av.Packet]) -> None:
        for packet in packets:
            self.out.mux(packet)

    def _flush_batch(self) -> None:
        if not self.batch:
            return
        arrays = np.stack([rgb for rgb, _ in self.batch])
        source = torch.from_numpy(arrays).permute(0, 3, 1, 2).float().div_(255.0)
        stylized = self.stylize(source)
        meter_in, meter_net, meter_out = self.meters
        for i, (_, pts) in enumerate(self.batch):
            frame_in, frame_net = source[i : i + 1], stylized[i : i + 1]
            frame_out = self.blend(frame_in, frame_net)
            rgb = frame_out[0].mul(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
            meter_in.add(frame_in)
            meter_net.add(frame_net)
            meter_out.add(torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div_(255.0))
            if self.palette is not None:
                frame = self.palette.frame(rgb)
            else:
                frame = to_tagged_yuv(rgb, self.video_out.pix_fmt)
            frame.pts = pts
            self._mux(self.video_out.encode(frame))
        self.report.frames += len(self.batch)
        self.batch.clear()
        if self.on_progress is not None:
            elapsed = time.perf_counter() - self.started
            done = self.report.frames
            newest = partial(_as_shown, rgb, self.rotation)
            self.on_progress(done, max(self.total, done), done / elapsed if elapsed > 0 else 0.0, newest)

    def _finish(self) -> RenderReport:
        self.report.seconds = time.perf_counter() - self.started
        meter_in, meter_net, meter_out = self.meters
        self.report.input_flicker = meter_in.mean
        self.report.network_flicker = meter_net.mean
        self.report.output_flicker = meter_out.mean
        return self.report


def render_stylized_video(
    source: str | Path | BinaryIO,
    destination: str | Path | BinaryIO,
    stylize: FrameStylizer,
    options: RenderOptions,
    *,
    total_frames: int = 0,
    on_progress: ProgressCallback | None = None,
) -> RenderReport:
    """Stylize ``source`` into ``destination`` (a path: MP4 gets its index up front for streaming).

    ``total_frames`` (from the probe) is only used to report progress; ``on_progress`` is called
    after each batch and may raise to stop the run (the destination is then incomplete).
    """
    encoder = encoder_for(options.output)
    if encoder.even_sides and (options.width % 2 or options.height % 2):
        raise ValueError(f"{encoder.codec} needs even sides, got {options.width}x{options.height}")
    muxer_options = {"movflags": "+faststart"} if encoder.container == "mp4" else {}
    rotation = display_rotation(source) if isinstance(source, str | Path) else 0
    with (
        av.open(source, mode="r") as src,
        av.open(destination, mode="w", format=encoder.container, options=muxer_options) as out,
    ):
        if not src.streams.video:
            raise ValueError("the input has no video stream")
        renderer = _Renderer(src, out, stylize, options, encoder, total_frames, on_progress, rotation)
        report = renderer.run()
    if report.frames == 0:
        raise ValueError("the input has no decodable frame")
    return report
