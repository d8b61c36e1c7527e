"""The API behind a Bearer-key check, answering like API keys will (401 + WWW-Authenticate).

Only for the browser test of the page's key dialog: the page, its files and the health probes stay
open; every other path needs ``Authorization: Bearer $ATELIER_TEST_API_KEY``.
"""

from __future__ import annotations

import os

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from app.main import create_app
from app.problems import PROBLEM_MEDIA_TYPE

OPEN_PATHS = ("/", "/healthz", "/readyz")


def create_keyed_app() -> FastAPI:
    app = create_app()
    expected = f"Bearer {os.environ['ATELIER_TEST_API_KEY']}"

    @app.middleware("http")
    async def require_key(request: Request, call_next):
        path = request.url.path
        open_path = path in OPEN_PATHS or path.startswith("/static/")
        if open_path or request.headers.get("authorization") == expected:
            return await call_next(request)
        return JSONResponse(
            {
                "type": "/problems/unauthorized",
                "title": "API key required",
                "status": 401,
                "detail": "Send a valid API key as 'Authorization: Bearer <key>'.",
                "instance": path,
            },
            status_code=401,
            media_type=PROBLEM_MEDIA_TYPE,
            headers={"WWW-Authenticate": 'Bearer realm="atelier"'},
        )

    return app
