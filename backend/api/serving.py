"""uvicorn's HTTP protocol with the timeouts it lacks: slow clients cannot hold connections open.

uvicorn closes an idle keep-alive connection (`--timeout-keep-alive`), but a connection that has
sent nothing yet, or half a request head, stays open for as long as the client likes: 500 such
"slowloris" connections were held indefinitely. This protocol closes a connection whose request
head is not complete within `BAGBOT_HEADER_TIMEOUT_SECONDS` (counted from the connection, or from
the end of the previous response) and answers 431 to a head larger than MAX_HEAD_BYTES (h11's
limit, which httptools does not have). A body that does not arrive in time is the ASGI
middleware's business (backend/api/limits.py, `BAGBOT_BODY_TIMEOUT_SECONDS`).

Used by `bagbot serve` and render.yaml's start command
(`uvicorn … --http backend.api.serving:TimedHttpToolsProtocol`).
"""

from __future__ import annotations

import asyncio
import functools

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from backend.config import Settings

MAX_HEAD_BYTES = 64 * 1024  # request line + headers; h11 refuses above 16 kB by default


@functools.cache
def header_timeout_seconds() -> float:
    return Settings.from_env().header_timeout_seconds


class TimedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that gives each request head a deadline and a size limit."""

    _head_timer: asyncio.TimerHandle | None = None
    _head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_timer is None or self.transport.is_closing():
            return
        self._head_bytes += len(data)  # the head is still not complete: all of it was head
        if self._head_bytes > MAX_HEAD_BYTES:
            self._cancel_head_timer()
            self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                                 b"content-length: 0\r\nconnection: close\r\n\r\n")
            self.transport.close()

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)  # a pipelined request already has its head
        super().on_response_complete()
        if not pipelined and not self.transport.is_closing():
            self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_bytes = 0
        self._head_timer = self.loop.call_later(header_timeout_seconds(), self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()
