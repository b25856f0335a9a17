"""A pure-ASGI middleware that bounds request bodies (uvicorn and Starlette have no limit).

A declared `Content-Length` above the limit is answered 413 before the body is read; a
chunked or lying body is counted as it streams and cut off with a 413 once it passes the
limit, so memory stays bounded either way.
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class _BodyTooLargeError(HTTPException):
    """Raised inside `receive` when the streamed body passes the limit.

    An HTTPException, because FastAPI turns any other exception raised while it reads a body
    into a 400 but lets HTTPException through to the handlers (which answer 413 here).
    """


class BodySizeLimit:
    """Answer 413 `{"detail": ...}` to any request whose body exceeds `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _message(self) -> str:
        return f"request body is larger than the limit of {self.max_bytes} bytes"

    def _detail(self) -> bytes:
        return json.dumps({"detail": self._message()}).encode()

    async def _reject(self, send: Send) -> None:
        body = self._detail()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes:
                    await self._reject(send)
                    return
                break

        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLargeError(413, self._message())
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLargeError:
            if not started:
                await self._reject(send)
