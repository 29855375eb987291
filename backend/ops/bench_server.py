"""A private redis-server for `bagbot bench --compare-bullmq`.

BullMQ's scripts FLUSHDB the server they run on, and a same-run comparison wants a server
no one else loads, so the comparison starts its own on a free port, without persistence.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from types import TracebackType

import redis


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """`with PrivateRedis() as server:` a redis-server on 127.0.0.1:server.port, stopped on exit."""

    def __init__(self, binary: str | None = None) -> None:
        found = binary or shutil.which("redis-server")
        if found is None:
            raise RuntimeError("redis-server not found on PATH: --compare-bullmq starts a private one")
        self.binary = found
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def version(self) -> str:
        client = redis.Redis(port=self.port)
        try:
            return str(client.info("server")["redis_version"])
        finally:
            client.close()

    def __enter__(self) -> PrivateRedis:
        self._dir = tempfile.TemporaryDirectory(prefix="bagbot-bench-redis-")
        self.port = _free_port()
        self._proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self._dir.name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 30
        try:
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if self._proc.poll() is not None or time.monotonic() > deadline:
                        self.__exit__(None, None, None)
                        raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                    time.sleep(0.05)
        finally:
            client.close()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None
