"""The API with API keys on (ATELIER_API_KEYS), for the browser test of the page's key dialog.

The key comes from ``ATELIER_TEST_API_KEY`` so the test can pick a fresh one per run; everything
else is the real app and its real key check (app/auth.py).
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from app.main import create_app
from core.settings import Settings


def create_keyed_app() -> FastAPI:
    return create_app(Settings(api_keys=os.environ["ATELIER_TEST_API_KEY"]))
