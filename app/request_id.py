"""``X-Request-ID``: one id per request, in its response, its problem body and its log lines.

When a user reports "I got a 500", the id on their response (the header, or ``request_id`` in the
problem body) finds the server's log lines of that request, its access line included. A client may
send its own id (up to 128 characters of ``A-Z a-z 0-9 . _ : -``, e.g. a trace id); anything else
is replaced by a fresh one.
"""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "X-Request-ID"
VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
NO_REQUEST = "-"

_current: ContextVar[str | None] = ContextVar("request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request being handled in this context (threadpool calls inherit it), or None."""
    return _current.get()


def _choose(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            sent = value.decode("latin-1")
            return sent if VALID_ID.fullmatch(sent) else uuid.uuid4().hex
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Outermost middleware: every answer, even a 413 of the body limit, carries the id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = _choose(scope)
        token = _current.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _current.reset(token)


class RequestIdLogFilter(logging.Filter):
    """Gives every log record a ``request_id`` attribute (``-`` outside a request) for the formats."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _current.get() or NO_REQUEST
        return True
