"""What tone-mapping HDR video costs: the same clip through the video pipeline, tagged HDR or SDR.

    python bench/video_hdr.py [--size 512] [--frames 60] [--rounds 3]

A phone-like 1280x720 30 fps clip (the scene of bench/video.py) is encoded once as 10-bit HEVC, as
iPhones record, twice over: tagged HLG + BT.2020 (so `models/hdr.py` tone-maps every frame) and
tagged BT.709 SDR (plain RGB conversion). Both go through :func:`models.video.render_stylized_video`
with the served network at ``--size``, alternating, ``--rounds`` times each, on this machine at
once: the ratio of their frames/s is the cost of HDR, measured side by side on a shared, noisy CPU.
The conversion alone (``_to_rgb`` per frame, no network) is timed the same way.

Results: ``bench/results/video-hdr-cpu-<date>.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import av  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from av.video.reformatter import ColorRange, Colorspace  # noqa: E402

from bench.machine import describe, machine  # noqa: E402
from bench.video import FPS, SOURCE_SIZE, load, scene  # noqa: E402
from core.settings import get_settings  # noqa: E402
from models.frame_stylizer import named_style_frames  # noqa: E402
from models.styles import load_network  # noqa: E402
from models.video import RenderOptions, _to_rgb, output_size, render_stylized_video  # noqa: E402

TAGS = {"hlg": (9, 9, 18), "sdr": (1, 1, 1)}  # H.273 matrix, primaries, transfer


def make_clip(path: Path, frames: int, tagging: str) -> None:
    """10-bit HEVC of the bench scene; only the colour tags differ between the two clips."""
    rng = np.random.default_rng(0)
    width, height = SOURCE_SIZE
    matrix, primaries, trc = TAGS[tagging]
    with av.open(str(path), "w", format="mov") as out:
        video = out.add_stream("libx265", rate=FPS, options={"crf": "24", "preset": "ultrafast"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p10le"
        context = video.codec_context
        context.colorspace, context.color_primaries, context.color_trc = matrix, primaries, trc
        context.color_range = ColorRange.MPEG
        for i in range(frames):
            rgb = av.VideoFrame.from_ndarray(scene(width, height, i / frames, rng), format="rgb24")
            frame = rgb.reformat(
                format="yuv420p10le",
                dst_colorspace=Colorspace.BT2020 if tagging == "hlg" else Colorspace.ITU709,
                dst_color_range=ColorRange.MPEG,
            )
            frame.colorspace, frame.color_primaries, frame.color_trc = matrix, primaries, trc
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))


def conversion_ms(path: Path, width: int, height: int) -> float:
    """Mean ms per frame of decoding to sRGB at the working size, without the network."""
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    start = time.perf_counter()
    for frame in frames:
        _to_rgb(frame, width, height)
    return 1000 * (time.perf_counter() - start) / len(frames)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--suffix", default="")
    a = p.parse_args()
    settings = get_settings()
    network = load_network(settings.weights_dir)
    style = network.names[0]
    runner = named_style_frames(
        network.model, network.style_weights([style]), torch.device("cpu"), threads=a.threads
    )
    width, height = output_size(*SOURCE_SIZE, a.size, even=True)
    runner(torch.rand(1, 3, height, width))  # warm-up
    results: dict[str, dict[str, list[float]]] = {k: {"frames_per_s": [], "convert_ms": []} for k in TAGS}
    colours: dict[str, str] = {}
    load_before = load()
    with tempfile.TemporaryDirectory() as tmp:
        clips = {k: Path(tmp) / f"{k}.mov" for k in TAGS}
        for tagging, path in clips.items():
            make_clip(path, a.frames, tagging)
        for _ in range(a.rounds):
            for tagging, path in clips.items():  # alternating: both see the same load
                options = RenderOptions(width, height, smoothing=0.5, batch_size=settings.video_batch_frames)
                report = render_stylized_video(path, Path(tmp) / "out.mp4", runner, options)
                results[tagging]["frames_per_s"].append(report.frames_per_s)
                results[tagging]["convert_ms"].append(conversion_ms(path, width, height))
                colours[tagging] = report.public()["colour"]
    median = {k: {m: statistics.median(v) for m, v in r.items()} for k, r in results.items()}
    summary = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_before": load_before,
        "load_after": load(),
        "clip": f"{SOURCE_SIZE[0]}x{SOURCE_SIZE[1]} {FPS} fps, {a.frames} frames, 10-bit HEVC",
        "output": f"{width}x{height}",
        "style": style,
        "rounds": a.rounds,
        "colour_reported": colours,
        "runs": results,
        "median": median,
        "hdr_over_sdr_frames_per_s": round(median["hlg"]["frames_per_s"] / median["sdr"]["frames_per_s"], 3),
        "hdr_extra_ms_per_frame": round(median["hlg"]["convert_ms"] - median["sdr"]["convert_ms"], 1),
    }
    stamp = datetime.now(UTC).strftime("%Y-%m-%d") + a.suffix
    out_dir = ROOT / "bench" / "results"
    (out_dir / f"video-hdr-cpu-{stamp}.json").write_text(json.dumps(summary, indent=1))
    lines = [
        f"# HDR video: what tone-mapping costs ({summary['date']})",
        "",
        describe(summary["machine"]),
        f"Load before/after: `{load_before}` / `{summary['load_after']}`",
        "",
        f"Clip: {summary['clip']}, stylized at {summary['output']} in `{style}`; the same frames tagged "
        f"HLG/BT.2020 (tone-mapped, reported `{colours['hlg']}`) or BT.709 SDR "
        f"(reported `{colours['sdr']}`); {a.rounds} alternating rounds, medians.",
        "",
        "| tagging | pipeline frames/s | decode to sRGB, ms/frame |",
        "|---|---|---|",
        *(f"| {k} | {median[k]['frames_per_s']:.2f} | {median[k]['convert_ms']:.1f} |" for k in TAGS),
        "",
        f"HDR over SDR frames/s: **{summary['hdr_over_sdr_frames_per_s']}**; tone-mapping adds "
        f"**{summary['hdr_extra_ms_per_frame']} ms** per frame.",
        "",
    ]
    (out_dir / f"video-hdr-cpu-{stamp}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
