"""The video stylization job: runs in a work horse, streams the clip through the style network.

The API has already probed the upload (container, streams, limits), so this only loads the network,
streams frames through :func:`models.video.render_stylized_video` and stores the encoded result
under the job's result key. Progress (frames done, total, frames/s) goes to the job's meta at most
twice a second, and the newest output frame to the job's preview (:mod:`worker.previews`); a cancel
request stops the job at the next batch of frames.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image
from redis import Redis

from core.job_options import VideoJobOptions
from core.settings import Settings
from core.store import JobKeys
from models.frame_stylizer import ArbitraryFrames, named_style_frames
from models.video import FrameStylizer, ProgressCallback, RenderOptions, render_stylized_video
from worker import runtime
from worker.jobs import ProgressRecorder, job_run, store_result
from worker.patience import patiently


def _frame_progress(progress: ProgressRecorder) -> ProgressCallback:
    def on_batch(done: int, total: int, frames_per_s: float, newest: Callable[[], Image.Image]) -> None:
        fields = {"frames": done, "total_frames": total, "frames_per_s": round(frames_per_s, 2)}
        progress.report(done, total, fields, newest)

    return on_batch


def _frame_stylizer(options: VideoJobOptions, settings: Settings, redis: Redis, keys: JobKeys, job_id: str):
    """The network for this job, loaded in the horse (small files: well under a second)."""
    device = runtime.resolve_device(settings.device)
    if options.style_image:
        from models.arbitrary import ArbitraryStyleModel, center_square

        data = patiently(lambda: redis.get(keys.style(job_id, 0)), "the style image")
        if data is None:
            raise ValueError("the style image expired before the job ran; submit the job again")
        model = ArbitraryStyleModel.load(settings.arbitrary_model_dir, threads=settings.torch_threads)
        painting = Image.open(io.BytesIO(data)).convert("RGB")
        return ArbitraryFrames(model, model.style_vector(center_square(painting)))
    from models.styles import load_network

    network = load_network(settings.weights_dir)
    if options.style not in network.names:
        raise ValueError(f"the style {options.style!r} is no longer served; submit the job again")
    style = network.style_weights([options.style])
    return named_style_frames(network.model, style, device, threads=settings.torch_threads)


def stylize_video_job(options: dict[str, Any]) -> dict[str, Any]:
    """Stylize the job's video; the encoded result goes to its result key, the return value is the report."""
    with job_run("stylize_video_job") as run:
        settings, keys, redis, job = run.settings, run.keys, run.redis, run.job
        opts = VideoJobOptions.from_dict(options)
        stylize: FrameStylizer = _frame_stylizer(opts, settings, redis, keys, job.id)
        video = patiently(lambda: redis.get(keys.video(job.id)), "the video")
        if video is None:
            raise ValueError("the video expired before the job ran; submit the job again")
        render = RenderOptions(
            width=opts.width,
            height=opts.height,
            output=opts.output,
            fps=opts.frame_rate,
            smoothing=opts.smoothing,
            batch_size=opts.batch_frames,
        )
        progress = ProgressRecorder.for_job(job, keys, settings)
        with tempfile.TemporaryDirectory(prefix="atelier-video-") as tmp:
            source, destination = Path(tmp) / "input", Path(tmp) / "output"
            source.write_bytes(video)
            del video
            report = render_stylized_video(
                source,
                destination,
                stylize,
                render,
                total_frames=opts.total_frames,
                on_progress=_frame_progress(progress),
            )
            body = destination.read_bytes()
        info = report.public() | {"bytes": len(body), "device": runtime.resolve_device(settings.device).type}
        job.meta["result_info"] = info
        job.meta["progress"] = {
            "step": report.frames,
            "total_steps": report.frames,
            "percent": 100.0,
            "frames": report.frames,
            "total_frames": report.frames,
            "frames_per_s": round(report.frames_per_s, 2),
        }
        patiently(job.save_meta, "progress")

        store_result(redis, keys, job.id, body, settings.result_ttl_s, run.seconds)
        return info
