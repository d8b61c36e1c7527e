"""The web page at ``/``: plain HTML, CSS and JavaScript modules under app/static, no build step.

Everything the page needs is served from here; the Content-Security-Policy makes the browser refuse
any other origin, so the page works offline and cannot leak a photo to a third party.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "img-src 'self' blob: data:",
        "media-src 'self' blob: mediastream:",
        "connect-src 'self'",  # same-origin fetch, EventSource and WebSocket only
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
        "form-action 'self'",
    ]
)

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    """The single page; its scripts and styles come from /static."""
    return FileResponse(
        STATIC_DIR / "index.html",
        media_type="text/html; charset=utf-8",
        headers={
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


def mount_static(app: FastAPI) -> None:
    """Serve app/static at /static (ETag and Last-Modified come with StaticFiles)."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
