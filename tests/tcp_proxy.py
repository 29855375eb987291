"""A small TCP proxy for network-fault tests: put it between a client and Redis, then cut, stall or
drop replies on purpose.

It runs its own event loop in a thread, so a test that blocks its own loop (or a worker in a
subprocess) never stalls the proxy by accident. Every control method is safe to call from the
test's thread.

- `cut()`: abort every open connection (both sides), as a dropped NAT entry or a restarted LB does.
- `refuse(True)`: new connections are closed at once (a partition that lasts).
- `stall()` / `resume()`: stop forwarding in both directions while keeping the connections open;
  what was held is delivered on resume (late packets: a command can reach Redis long after its
  client gave up on it).
- `drop_reply(marker)`: the next request containing `marker` reaches Redis and runs, but its reply
  is thrown away and the connection cut: the client cannot tell whether the command ran.
- `drop_request(marker)`: the next request containing `marker` never reaches Redis; the connection
  is cut (a request lost on the way).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.redis_server import free_port


@dataclass(eq=False)  # identity: connections live in a set
class _Conn:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    drop_next_reply: bool = False

    def abort(self) -> None:
        for writer in (self.client, self.server):
            if not writer.transport.is_closing():
                writer.transport.abort()


@dataclass
class _Rule:
    marker: bytes
    remaining: int
    request: bool = False  # drop the request itself (it never runs), not its reply


@dataclass
class TcpProxy:
    target_host: str
    target_port: int
    port: int = field(default_factory=free_port)
    dropped: int = 0  # replies thrown away so far
    dropped_replies: list[bytes] = field(default_factory=list)  # their first bytes: b"-" is an error
    dropped_requests: int = 0  # requests thrown away before reaching the server
    connections: int = 0  # connections accepted so far

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._conns: set[_Conn] = set()
        self._rules: list[_Rule] = []
        self._refusing = False
        self._flowing: asyncio.Event | None = None
        self._server: asyncio.Server | None = None

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> TcpProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    def close(self) -> None:
        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for conn in list(self._conns):
                conn.abort()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    # -- faults -----------------------------------------------------------------------------------

    def cut(self) -> int:
        """Abort every open connection; returns how many were cut."""
        return self._call(self._cut)

    def refuse(self, on: bool) -> None:
        def set_refusing() -> None:
            self._refusing = on

        self._call(set_refusing)

    def stall(self) -> None:
        self._call(lambda: self._event().clear())

    def resume(self) -> None:
        self._call(lambda: self._event().set())

    def drop_reply(self, marker: bytes, count: int = 1) -> None:
        """The next `count` requests that contain `marker` run on Redis, but nobody gets their reply."""
        self._call(lambda: self._rules.append(_Rule(marker, count)))

    def drop_request(self, marker: bytes, count: int = 1) -> None:
        """The next `count` requests that contain `marker` never reach Redis (their connection is cut)."""
        self._call(lambda: self._rules.append(_Rule(marker, count, request=True)))

    # -- inside the proxy's loop --------------------------------------------------------------------

    def _call(self, fn: Callable[[], object]) -> int:
        async def run() -> int:
            result = fn()
            return int(result) if isinstance(result, int) else 0

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def _event(self) -> asyncio.Event:
        if self._flowing is None:
            self._flowing = asyncio.Event()
            self._flowing.set()
        return self._flowing

    def _cut(self) -> int:
        conns = list(self._conns)
        for conn in conns:
            conn.abort()
        self._conns.clear()
        return len(conns)

    async def _listen(self) -> None:
        self._event()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self._refusing:
            client_w.transport.abort()
            return
        try:
            server_r, server_w = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            client_w.transport.abort()
            return
        self.connections += 1
        conn = _Conn(client_w, server_w)
        self._conns.add(conn)
        try:
            await asyncio.gather(self._pump(client_r, conn, upstream=True),
                                 self._pump(server_r, conn, upstream=False))
        finally:
            conn.abort()
            self._conns.discard(conn)

    async def _pump(self, reader: asyncio.StreamReader, conn: _Conn, upstream: bool) -> None:
        writer = conn.server if upstream else conn.client
        try:
            while chunk := await reader.read(65536):
                await self._event().wait()
                if upstream and self._match(chunk, conn):
                    self.dropped_requests += 1
                    conn.abort()
                    return
                if not upstream and conn.drop_next_reply:
                    self.dropped += 1
                    self.dropped_replies.append(chunk[:64])
                    conn.abort()
                    return
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            conn.abort()

    def _match(self, chunk: bytes, conn: _Conn) -> bool:
        """Apply the first rule `chunk` matches; True when the request itself is to be dropped."""
        for rule in self._rules:
            if rule.remaining > 0 and rule.marker in chunk:
                rule.remaining -= 1
                if rule.request:
                    return True
                conn.drop_next_reply = True
                return False
        return False
