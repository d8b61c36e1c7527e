"""HEAD for every GET route, as RFC 9110 asks of a general-purpose server.

FastAPI routes answer only the methods they declare, so ``curl -I`` (the size and type of a result
before downloading it, whether a job exists) was a 405 whose ``Allow`` said HEAD. This middleware
runs a HEAD as the GET it mirrors and sends only the headers: the same status, ``Content-Length``,
``ETag`` and the rest. Once those are out, the app is told the client has gone, so a streaming GET
(a job's event stream) ends instead of running on with nobody to send to.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGetMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        headers_sent = False

        async def headers_only(message: Message) -> None:
            nonlocal headers_sent
            if message["type"] == "http.response.start":
                await send(message)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                headers_sent = True
            elif not headers_sent:
                await send(message)

        async def gone_once_answered() -> Message:
            if headers_sent:
                return {"type": "http.disconnect"}
            return await receive()

        await self.app({**scope, "method": "GET"}, gone_once_answered, headers_only)
