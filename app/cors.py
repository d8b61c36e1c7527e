"""Cross-origin access for web apps served from elsewhere (``ATELIER_CORS_ORIGINS``; off by default).

The API's own page is same-origin and needs none of this. A front end on another origin (your site
calling this server from the browser) needs the server to say that origin may read its answers,
and which of its headers it may see: Starlette's CORS middleware does both, preflights included.
API keys travel as ``Authorization: Bearer``, not cookies, so credentials mode stays off.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from core.settings import Settings

REQUEST_HEADERS = ["Authorization", "Content-Type", "Idempotency-Key", "Prefer", "X-Request-ID", "Range"]
# What a page may read of an answer besides the CORS-safelisted ones: job URLs, backpressure, the
# model and timings of a stylization, waits, downloads, the request id to quote in a report.
EXPOSED_HEADERS = [
    "Location",
    "Retry-After",
    "Idempotent-Replayed",
    "Preference-Applied",
    "ETag",
    "Content-Range",
    "Content-Disposition",
    "Server-Timing",
    "X-Request-ID",
    "X-Atelier-Model",
    "X-Atelier-Inference-Ms",
    "X-Atelier-Batch-Size",
    "X-Atelier-Style",
    "X-Atelier-Style-Weights",
    "X-Atelier-Style-Digest",
    "X-Atelier-Style-Cache",
    "X-Atelier-Preview-Step",
]


def origins(settings: Settings) -> list[str]:
    return [origin.strip().rstrip("/") for origin in settings.cors_origins.split(",") if origin.strip()]


def install_cors(app: FastAPI, settings: Settings) -> None:
    """Add the CORS middleware when origins are configured (call it last: outermost, so preflights
    and error answers alike carry the headers)."""
    allowed = origins(settings)
    if not allowed:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=allowed,
        allow_methods=["GET", "HEAD", "POST", "DELETE"],
        allow_headers=REQUEST_HEADERS,
        expose_headers=EXPOSED_HEADERS,
        max_age=600,
    )
