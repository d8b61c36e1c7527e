"""WS /ws/stylize: live webcam stylization over a WebSocket, newest frame wins.

The client sends camera frames as binary messages (JPEG, WebP or PNG, a few hundred pixels wide).
Two tasks serve a connection: a receiver that reads every message at once and keeps only the newest
frame (:class:`FrameMailbox`), and a processor that stylizes whatever is newest when the model is
free and sends back a JSON ``frame`` message followed by the image. When the server falls behind,
frames are dropped, never queued, so the picture stays current. The model call is the shared
:class:`Stylizer` (its micro-batcher thread), never the event loop.

Messages from the server (JSON text, except the image itself):

* ``{"event": "ready", "style": ..., "max_side": ..., "format": ...}`` once, after the handshake;
* ``{"event": "frame", "seq": n, "width": w, "height": h, "received": r, "dropped": d,
  "timings_ms": {...}}``, then one binary message with the stylized frame ``n``;
* ``{"event": "error", "problem": {...}}`` with an RFC 9457 problem: a bad frame is skipped and
  the stream goes on; a bad query (unknown style, say) is followed by a close with code 1008 and
  the problem's detail as the reason (1013 when no style network is loaded).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Literal, cast

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import QueryParams

from app.auth import authenticate_websocket, websocket_subprotocol
from app.frame_mailbox import FrameMailbox
from app.problems import Problem
from app.services.stylizer import Stylizer
from app.uploads import decode_image
from core.settings import Settings

log = logging.getLogger(__name__)

router = APIRouter(tags=["live"])

PATH = "/ws/stylize"
QUERY_FIELDS = ("style", "strength", "preserve_color", "format", "key")  # key: see app.auth
FORMATS = ("jpeg", "webp", "png")
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_INTERNAL_ERROR = 1011
MAX_CLOSE_REASON_BYTES = 123  # RFC 6455: a close frame's payload is at most 125 bytes


@dataclass(frozen=True)
class LiveOptions:
    """What one live session applies to every frame (fixed for the connection)."""

    style: str
    strength: float
    preserve_color: bool
    format: Literal["jpeg", "webp", "png"]


def _invalid(detail: str, field: str) -> Problem:
    return Problem(422, "validation-error", detail, field=field)


def parse_options(query: QueryParams, stylizer: Stylizer | None) -> LiveOptions:
    """Validate the query string the way POST /stylize validates its form, as a problem."""
    unknown = sorted(set(query.keys()) - set(QUERY_FIELDS))
    if unknown:
        raise _invalid(
            f"Unknown query parameter(s): {', '.join(unknown)}. Accepted: {', '.join(QUERY_FIELDS)}.",
            unknown[0],
        )
    repeated = [name for name in QUERY_FIELDS if len(query.getlist(name)) > 1]
    if repeated:
        raise _invalid(f"'{repeated[0]}' was sent more than once but takes one value.", repeated[0])
    if stylizer is None or not stylizer.available:
        raise Problem(503, "service-unavailable", "No style network is loaded; see /readyz.")
    style = query.get("style", "")
    if style not in stylizer.names:
        raise Problem(
            422,
            "unknown-style",
            f"Unknown style '{style}'. Valid styles: {', '.join(stylizer.names)}.",
            field="style",
        )
    try:
        strength = float(query.get("strength", "1"))
    except ValueError:
        raise _invalid("'strength' must be a number between 0 and 1.", "strength") from None
    if not 0.0 <= strength <= 1.0:
        raise _invalid("'strength' must be between 0 and 1.", "strength")
    flag = query.get("preserve_color", "false").lower()
    if flag not in ("true", "false", "1", "0"):
        raise _invalid("'preserve_color' must be true or false.", "preserve_color")
    fmt = query.get("format", "jpeg")
    if fmt not in FORMATS:
        raise _invalid(f"'format' must be one of {', '.join(FORMATS)}.", "format")
    return LiveOptions(style, strength, flag in ("true", "1"), cast(Literal["jpeg", "webp", "png"], fmt))


def _close_reason(detail: str) -> str:
    encoded = detail.encode()
    if len(encoded) <= MAX_CLOSE_REASON_BYTES:
        return detail
    return encoded[: MAX_CLOSE_REASON_BYTES - 3].decode(errors="ignore") + "..."


class LiveSession:
    """One connection: a receiver task and a processor task sharing a one-frame mailbox."""

    def __init__(
        self, websocket: WebSocket, stylizer: Stylizer, options: LiveOptions, settings: Settings
    ) -> None:
        self.websocket = websocket
        self.stylizer = stylizer
        self.options = options
        self.settings = settings
        self.mailbox = FrameMailbox()
        self.send_lock = asyncio.Lock()  # a frame's JSON and its image must not be split by an error
        self.client_gone = False

    async def send(self, *messages: dict[str, Any] | bytes) -> None:
        """Send messages back to back (nothing in between); nothing once the client has left."""
        async with self.send_lock:
            for message in messages:
                if self.client_gone:
                    return
                if isinstance(message, bytes):
                    await self.websocket.send_bytes(message)
                else:
                    await self.websocket.send_json(message)

    async def send_problem(self, problem: Problem) -> None:
        await self.send({"event": "error", "problem": problem.body(PATH)})

    async def receive_frames(self) -> None:
        """Read every message as soon as it arrives; keep only the newest frame."""
        try:
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    self.client_gone = True
                    return
                frame = message.get("bytes")
                if frame is None:
                    await self.send_problem(
                        _invalid("Send frames as binary messages (JPEG, WebP or PNG bytes).", "frame")
                    )
                elif len(frame) > self.settings.live_max_frame_bytes:
                    await self.send_problem(
                        Problem(
                            413,
                            "payload-too-large",
                            f"A frame is {len(frame)} bytes; the limit is "
                            f"{self.settings.live_max_frame_bytes}. Send smaller JPEG or WebP frames.",
                            field="frame",
                        )
                    )
                else:
                    self.mailbox.put(frame)
        finally:
            self.mailbox.close()

    async def process_frames(self) -> None:
        """Stylize the newest frame whenever the model is free; bad frames get an error, not a close."""
        options = self.options
        while (taken := await self.mailbox.take()) is not None:
            seq, data = taken
            try:
                image = await run_in_threadpool(decode_image, data, "frame", self.settings.max_image_pixels)
                result = await self.stylizer.stylize(
                    self.stylizer.style_code([options.style]),
                    image,
                    size=None,
                    max_size=self.settings.live_max_side,
                    strength=options.strength,
                    keep_colors=options.preserve_color,
                    fmt=options.format,
                )
            except Problem as problem:
                await self.send_problem(problem)
                continue
            meta: dict[str, Any] = {
                "event": "frame",
                "seq": seq,
                "width": result.width,
                "height": result.height,
                "received": self.mailbox.received,
                "dropped": self.mailbox.dropped,
                "batch_size": result.batch_size,
                "timings_ms": result.timings_ms,
            }
            await self.send(meta, result.body)

    async def run(self) -> None:
        """Run both tasks until the client leaves (or a send fails).

        When the client leaves, the processor is not cancelled (its frame may be inside a worker
        thread or the batcher): it finishes that frame, sends nothing, finds the mailbox closed and
        returns. Only the receiver, which merely awaits the socket, is ever cancelled.
        """
        receiver = asyncio.create_task(self.receive_frames())
        processor = asyncio.create_task(self.process_frames())
        await asyncio.wait({receiver, processor}, return_when=asyncio.FIRST_COMPLETED)
        if not receiver.done():  # the processor failed: stop reading from the socket
            receiver.cancel()
        results = await asyncio.gather(receiver, processor, return_exceptions=True)
        failures = [
            r
            for r in results
            if isinstance(r, BaseException)
            and not isinstance(r, asyncio.CancelledError | WebSocketDisconnect | OSError)
        ]
        if failures:
            raise failures[0]


@router.websocket(PATH, name="live_stylize")
async def live_stylize(websocket: WebSocket) -> None:
    """Live stylization of webcam frames; see the module docstring for the message protocol."""
    stylizer: Stylizer | None = getattr(websocket.app.state, "stylizer", None)
    settings: Settings = websocket.app.state.settings
    await websocket.accept(subprotocol=websocket_subprotocol(websocket))
    try:
        authenticate_websocket(websocket)  # a 401 problem, then a close with 1008, like a bad query
        options = parse_options(websocket.query_params, stylizer)
    except Problem as problem:
        await websocket.send_json({"event": "error", "problem": problem.body(PATH)})
        code = CLOSE_TRY_AGAIN_LATER if problem.status == 503 else CLOSE_POLICY_VIOLATION
        await websocket.close(code=code, reason=_close_reason(problem.detail))
        return
    assert stylizer is not None
    await websocket.send_json(
        {
            "event": "ready",
            "style": options.style,
            "max_side": settings.live_max_side,
            "max_frame_bytes": settings.live_max_frame_bytes,
            "format": options.format,
        }
    )
    try:
        await LiveSession(websocket, stylizer, options, settings).run()
    except Exception:
        log.exception("live stylization session failed")
        with contextlib.suppress(Exception):
            problem = Problem(500, "internal-error", "Unexpected server error; the stream was closed.")
            await websocket.send_json({"event": "error", "problem": problem.body(PATH)})
            await websocket.close(code=CLOSE_INTERNAL_ERROR, reason="Unexpected server error.")
