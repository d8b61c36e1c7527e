"""Oversized bodies are refused with 413 problem details, declared or streamed."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI, Request

from app.body_limit import BodyLimitMiddleware
from app.problems import install_problem_handlers


def make_app(limit: int) -> tuple[FastAPI, list[int]]:
    app = FastAPI()
    install_problem_handlers(app)
    seen: list[int] = []

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        body = await request.body()
        seen.append(len(body))
        return {"bytes": len(body)}

    app.add_middleware(BodyLimitMiddleware, max_bytes=limit)
    return app, seen


async def _post(app: FastAPI, **kwargs) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        return await client.post("/echo", **kwargs)


def test_small_body_passes():
    app, seen = make_app(1000)
    resp = asyncio.run(_post(app, content=b"a" * 500))
    assert resp.status_code == 200 and resp.json() == {"bytes": 500} and seen == [500]


def test_declared_length_over_limit_is_refused_without_reaching_the_route():
    app, seen = make_app(1000)
    resp = asyncio.run(_post(app, content=b"a" * 5000))
    assert resp.status_code == 413 and resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["status"] == 413 and seen == []


def test_streamed_body_is_cut_off_at_the_limit():
    app, seen = make_app(1000)

    async def chunks():
        for _ in range(50):
            yield b"b" * 100

    resp = asyncio.run(_post(app, content=chunks()))
    assert resp.status_code == 413 and resp.json()["type"] == "/problems/payload-too-large"
    assert seen == []
