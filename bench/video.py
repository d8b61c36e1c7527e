"""Benchmark video stylization: frames/s at 256 and 512 px, flicker, and one clip through the queue.

    python bench/video.py [--sizes 256 512] [--frames 90] [--queue-seconds 10] [--no-queue]

1. Pipeline (in this process, the worker's own code): a synthetic 1280x720 30 fps clip (moving
   sun, textured hills, sensor noise, H.264 CRF 23 so it has real compression noise) is stylized by
   :func:`models.video.render_stylized_video` with the served multi-style network on ONNX Runtime,
   at each longest side. Frames/s is end to end (decode, resize, network, blend, encode); the
   network's share is timed separately. Flicker (mean |frame_t - frame_t-1|) of input, raw network
   output and encoded output, for several temporal-blend strengths.
2. Queue: a 10 s clip at 512 px through the real API (uvicorn) and a real `atelier worker`, polling
   GET /jobs/{id} for progress, as a client would.

Results: ``bench/results/video-cpu-<date>.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import av  # noqa: E402
import httpx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.machine import describe, machine  # noqa: E402
from bench.serve import HOST, free_port, start_api  # noqa: E402
from core.settings import get_settings  # noqa: E402
from models.frame_stylizer import named_style_frames  # noqa: E402
from models.styles import load_network  # noqa: E402
from models.video import RenderOptions, output_size, render_stylized_video  # noqa: E402
from models.video_probe import VideoLimits, probe_video  # noqa: E402

SOURCE_SIZE = (1280, 720)
FPS = 30


def scene(width: int, height: int, t: float, rng: np.random.Generator) -> np.ndarray:
    """A camera-like frame: sky gradient, a travelling sun, textured hills, a little sensor noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([0.35 + 0.4 * y / height, 0.55 + 0.3 * y / height, np.full_like(y, 0.95)], axis=-1)
    cx, cy = width * (0.2 + 0.6 * t), height * 0.3
    img[((x - cx) ** 2 + (y - cy) ** 2) < (0.09 * width) ** 2] = (1.0, 0.85, 0.3)
    hills = y > height * (0.62 + 0.08 * np.sin(x / width * 6.3 + t * 2.0))
    texture = 0.08 * np.sin(x * 0.05) * np.cos(y * 0.04)
    img[hills] = np.stack([0.2 + texture, 0.5 + texture, 0.2 + texture], axis=-1)[hills]
    img += rng.normal(0.0, 0.01, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def make_source(path: Path, seconds: float) -> None:
    """The test clip: H.264 CRF 23 with an AAC tone, like a phone clip after upload compression."""
    rng = np.random.default_rng(0)
    frames = round(seconds * FPS)
    width, height = SOURCE_SIZE
    with av.open(str(path), "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=FPS, options={"crf": "23", "preset": "veryfast"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = out.add_stream("aac", rate=44100)
        audio.layout = "stereo"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(scene(width, height, i / frames, rng), format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        t = np.arange(int(44100 * seconds)) / 44100
        tone = np.stack([np.sin(2 * np.pi * 330 * t), np.sin(2 * np.pi * 440 * t)]).astype(np.float32) * 0.2
        for start in range(0, tone.shape[1], 1024):
            chunk = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(tone[:, start : start + 1024]), format="fltp", layout="stereo"
            )
            chunk.sample_rate, chunk.pts = 44100, start
            out.mux(audio.encode(chunk))
        out.mux(audio.encode(None))


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


class TimedStylizer:
    """Wraps the frame stylizer to time the network alone."""

    def __init__(self, inner) -> None:
        self.inner, self.seconds = inner, 0.0

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = self.inner(frames)
        self.seconds += time.perf_counter() - start
        return out


def pipeline_runs(source: Path, sizes: list[int], smoothings: list[float], threads: int) -> list[dict]:
    settings = get_settings()
    network = load_network(settings.weights_dir)
    style = network.names[0]
    runner = named_style_frames(
        network.model, network.style_weights([style]), torch.device("cpu"), threads=threads
    )
    info = probe_video(source.read_bytes(), VideoLimits(600, 100_000, 10**8))
    runs = []
    for size in sizes:
        width, height = output_size(info.width, info.height, size, even=True)
        runner(torch.rand(1, 3, height, width))  # warm-up at this size
        for smoothing in smoothings if size == sizes[0] else [smoothings[-1]]:
            timed = TimedStylizer(runner)
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "out.mp4"
                report = render_stylized_video(
                    source,
                    out,
                    timed,
                    RenderOptions(width, height, smoothing=smoothing, batch_size=settings.video_batch_frames),
                )
                out_bytes = out.stat().st_size
            public = report.public()
            runs.append(
                {
                    "style": style,
                    "size": f"{width}x{height}",
                    "smoothing": smoothing,
                    "frames": report.frames,
                    "frames_per_s": round(report.frames_per_s, 2),
                    "network_ms_per_frame": round(1000 * timed.seconds / report.frames, 1),
                    "network_share": round(timed.seconds / report.seconds, 3),
                    "output_bytes": out_bytes,
                    "flicker": public["flicker"],
                    "audio": report.audio,
                }
            )
            print(json.dumps(runs[-1]), flush=True)
    return runs


def queue_run(source: Path, size: int, poll_s: float = 1.0) -> dict[str, Any]:
    """One clip through the real API and a real worker; progress as the client sees it."""
    tag = uuid.uuid4().hex[:8]
    env = {
        "ATELIER_QUEUE_NAME": f"atelier-bench-video-{tag}",
        "ATELIER_KEY_PREFIX": f"atelier-bench-video-{tag}:",
    }
    port = free_port()
    api = start_api(port, env, lambda p: httpx.get(f"http://{HOST}:{p}/readyz", timeout=2).status_code < 600)
    worker = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker"], cwd=ROOT, env={**os.environ, **env}
    )
    base = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + 120
        while httpx.get(f"{base}/readyz", timeout=5).status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the API never became ready (worker, models)")
            time.sleep(1)
        style = httpx.get(f"{base}/styles", timeout=5).json()["styles"][0]["name"]
        with source.open("rb") as f:
            resp = httpx.post(
                f"{base}/jobs/stylize-video",
                files={"file": ("clip.mp4", f, "video/mp4")},
                data={"style": style, "size": str(size)},
                timeout=120,
            )
        resp.raise_for_status()
        job = resp.json()
        started = time.monotonic()
        samples = []
        while True:
            body = httpx.get(f"{base}/jobs/{job['id']}", timeout=10).json()
            samples.append(
                {"t_s": round(time.monotonic() - started, 1), "state": body["state"], **body["progress"]}
            )
            if body["state"] in ("finished", "failed", "canceled"):
                break
            time.sleep(poll_s)
        result = (
            httpx.get(f"{base}/jobs/{job['id']}/result", timeout=60) if body["state"] == "finished" else None
        )
        return {
            "style": style,
            "state": body["state"],
            "error": body.get("error"),
            "wall_s": round(time.monotonic() - started, 1),
            "input": job["options"]["input"],
            "output": f"{job['options']['width']}x{job['options']['height']}",
            "result_type": result.headers["content-type"] if result is not None else None,
            "result_bytes": len(result.content) if result is not None else 0,
            "progress": samples[:: max(1, len(samples) // 12)] + samples[-1:],
        }
    finally:
        worker.terminate()
        api.terminate()
        worker.wait(timeout=60)
        api.wait(timeout=30)


def write_markdown(path: Path, record: dict[str, Any]) -> None:
    m = record["machine"]
    lines = [
        f"# Video stylization, CPU, {record['date']}",
        "",
        f"{describe(m)}.",
        f"Load before: `{record['load_before']}`; after: `{record['load_after']}`.",
        "",
        f"Source: synthetic {SOURCE_SIZE[0]}x{SOURCE_SIZE[1]} {FPS} fps H.264 (CRF 23) + AAC, "
        f"{record['pipeline_frames']} frames. Network: the served multi-style network "
        f"(style `{record['pipeline'][0]['style']}`), ONNX Runtime, batches of {record['batch']} frames.",
        "",
        "## Frames per second (end to end: decode, resize, network, blend, encode)",
        "",
        "| output | smoothing | frames/s | net ms/frame | net share | flicker in / net / out | out/in |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in record["pipeline"]:
        f = r["flicker"]
        lines.append(
            f"| {r['size']} | {r['smoothing']} | **{r['frames_per_s']}** | {r['network_ms_per_frame']} | "
            f"{r['network_share']:.0%} | {f['input']:.4f} / {f['network']:.4f} / {f['output']:.4f} | "
            f"{f['output_over_input']} |"
        )
    lines += [
        "",
        "Flicker: mean absolute difference of consecutive frames (0..1), of the resized input, of the "
        "network's raw output, and of what was encoded (after the temporal blend). Smoothing 0 is the "
        "blend switched off.",
    ]
    q = record.get("queue")
    if q:
        lines += [
            "",
            f"## Through the queue: {q['input']['duration_s']} s clip at {q['output']}",
            "",
            f"State `{q['state']}` after {q['wall_s']} s of wall time (submit to finished, as polled), "
            f"result `{q['result_type']}` {q['result_bytes']} bytes. Progress as GET /jobs/{{id}} showed it:",
            "",
            "| t (s) | state | frames | total | frames/s |",
            "|---|---|---|---|---|",
        ]
        for s in q["progress"]:
            cells = [s["t_s"], s["state"], s.get("frames"), s.get("total_frames"), s.get("frames_per_s")]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "Reproduce: `python bench/video.py`."]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--frames", type=int, default=90, help="frames of the pipeline clip")
    p.add_argument("--smoothing", type=float, nargs="+", default=[0.0, 0.8, 0.5])
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--queue-seconds", type=float, default=10.0)
    p.add_argument("--queue-size", type=int, default=512)
    p.add_argument("--no-queue", action="store_true")
    p.add_argument("--suffix", default="")
    args = p.parse_args()
    record: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(torch=torch.__version__, pyav=av.__version__),
        "load_before": load(),
        "batch": get_settings().video_batch_frames,
        "pipeline_frames": args.frames,
    }
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        make_source(clip, args.frames / FPS)
        record["pipeline"] = pipeline_runs(clip, args.sizes, args.smoothing, args.threads)
        if not args.no_queue:
            long_clip = Path(tmp) / "long.mp4"
            make_source(long_clip, args.queue_seconds)
            record["queue"] = queue_run(long_clip, args.queue_size)
            print(json.dumps(record["queue"]), flush=True)
    record["load_after"] = load()
    out = ROOT / "bench" / "results"
    stem = f"video-cpu-{datetime.now(UTC):%Y-%m-%d}{args.suffix}"
    (out / f"{stem}.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    write_markdown(out / f"{stem}.md", record)
    print(f"wrote {out / stem}.md")


if __name__ == "__main__":
    main()
