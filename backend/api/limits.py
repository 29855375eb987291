"""Request body size and time limits, enforced before any route parses the body.

Size is checked twice: the declared Content-Length (cheap, rejects at once) and the
bytes actually streamed (a chunked body declares no length). The whole body must arrive
within `timeout_seconds` (BAGBOT_BODY_TIMEOUT_SECONDS), else 408 and the connection is closed:
a client trickling or stalling its body cannot hold a connection (docs/deployment.md).

Before the 413 is sent the rest of the body is read and dropped (up to DRAIN_BYTES, within the
same deadline): a plain client such as urllib sends its whole body before it reads the answer,
and a server that closes with unread bytes in its socket makes the kernel reset the connection,
so the client would see the reset instead of the 413.
"""

from __future__ import annotations

import asyncio
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DRAIN_BYTES = 64 * 1024 * 1024  # read at most this much of a refused body before answering


class BodyLimitMiddleware:
    """Answer 413 to any request whose body is larger than `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_seconds: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_seconds = timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        deadline = asyncio.get_running_loop().time() + self.timeout_seconds
        if declared is not None and declared > self.max_bytes:
            await _drain(receive, declared <= DRAIN_BYTES, deadline)
            await self._too_large(send)
            return
        # Buffer the body (at most max_bytes) and replay it: the route never sees a partial body.
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                detail = f"request body not received within {self.timeout_seconds:g} s"
                await self._send_json(send, 408, detail)
                return
            if message["type"] != "http.request":
                return  # the client went away before sending its body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                if message.get("more_body", False):
                    await _drain(receive, True, deadline)
                await self._too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _too_large(self, send: Send) -> None:
        await self._send_json(send, 413, f"request body too large: the limit is {self.max_bytes} bytes")

    @staticmethod
    async def _send_json(send: Send, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send({
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close")],
        })
        await send({"type": "http.response.body", "body": body})


async def _drain(receive: Receive, wanted: bool, deadline: float) -> None:
    """Read and drop the rest of a refused body, at most DRAIN_BYTES and until `deadline`."""
    size = 0
    try:
        async with asyncio.timeout_at(deadline):
            while wanted and size <= DRAIN_BYTES:
                message = await receive()
                if message["type"] != "http.request":
                    return
                size += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return
    except TimeoutError:
        return  # answer anyway: the client stalled mid-body


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # later calls wait for the disconnect, as usual

    return replay
