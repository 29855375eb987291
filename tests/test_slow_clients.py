"""Slow clients cannot hold the backend's connections: a real uvicorn run as render.yaml runs it.

uvicorn alone kept a connection that sent half a request head, or a head and part of a body,
open for as long as the client liked (500 such connections were held). With
`--http backend.api.serving:TimedHttpToolsProtocol` a head must be complete within
BAGBOT_HEADER_TIMEOUT_SECONDS and the body must arrive within BAGBOT_BODY_TIMEOUT_SECONDS
(408); normal requests, keep-alive and long event streams are not affected.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api_server import BackendProcess

pytestmark = pytest.mark.slow

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 2.0
MARGIN = 15.0  # the machine may be loaded: "closed within the limit" is checked as limit + margin


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[BackendProcess]:
    env = {"JOB_STORE": "memory", "BAGBOT_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
           "BAGBOT_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT)}
    server = BackendProcess(tmp_path, env)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def connect(backend: BackendProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", backend.port), timeout=5)
    sock.settimeout(HEADER_TIMEOUT + BODY_TIMEOUT + MARGIN)
    return sock


def read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took."""
    started = time.monotonic()
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    except TimeoutError as exc:
        raise AssertionError(f"the server kept the connection open; it sent {received!r}") from exc
    return received, time.monotonic() - started


def test_half_a_request_head_is_closed(backend: BackendProcess) -> None:
    with connect(backend) as sock:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n")  # ... and the rest never comes
        received, took = read_until_closed(sock)
    assert received == b"" and took < HEADER_TIMEOUT + MARGIN


def test_a_connection_that_sends_nothing_is_closed(backend: BackendProcess) -> None:
    with connect(backend) as sock:
        received, _ = read_until_closed(sock)
    assert received == b""


def test_a_head_trickled_byte_by_byte_is_closed(backend: BackendProcess) -> None:
    """The deadline is for the whole head, not per byte: trickling does not keep it open."""
    head = b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
    with connect(backend) as sock:
        deadline = time.monotonic() + HEADER_TIMEOUT + MARGIN
        closed = False
        for byte in head:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.05)
            if time.monotonic() > deadline:
                break
        if not closed:
            sock.settimeout(1)
            closed = read_until_closed(sock)[0] == b""
    assert closed


def test_a_head_then_part_of_the_body_gets_408_and_is_closed(backend: BackendProcess) -> None:
    with connect(backend) as sock:
        sock.sendall(b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"name\": \"bagbot.noop\", ")  # ... 970 bytes missing
        received, took = read_until_closed(sock)
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert b"request body not received within 2 s" in received
    assert took < BODY_TIMEOUT + MARGIN


def test_an_oversized_head_gets_431(backend: BackendProcess) -> None:
    with connect(backend) as sock:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n")
        try:
            for _ in range(100):
                sock.sendall(b"X-Big: " + b"b" * 1000 + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        received, _ = read_until_closed(sock)
    assert received.startswith(b"HTTP/1.1 431 "), received[:100]


def test_200_slowloris_connections_are_all_closed_and_the_api_answers_meanwhile(
    backend: BackendProcess,
) -> None:
    socks = [connect(backend) for _ in range(200)]
    try:
        half_head = b"GET /api/health HTTP/1.1\r\n"
        half_body = b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"
        for i, sock in enumerate(socks):
            sock.sendall(half_head if i % 2 else half_body)
        assert httpx.get(backend.base_url + "/api/health", timeout=10).status_code == 200
        for sock in socks:
            received, _ = read_until_closed(sock)
            assert received == b"" or received.startswith(b"HTTP/1.1 408 "), received
    finally:
        for sock in socks:
            sock.close()


def test_normal_requests_keep_alive_and_long_streams_are_not_cut(backend: BackendProcess) -> None:
    with httpx.Client(base_url=backend.base_url, timeout=30) as client:
        for _ in range(3):  # one keep-alive connection, pauses longer than the head timeout
            enqueued = client.post("/api/jobs", json={"name": "bagbot.echo", "args": ["x" * 100_000]})
            assert enqueued.status_code == 201, enqueued.text
            time.sleep(HEADER_TIMEOUT * 1.5)
        # an event stream lasts longer than both timeouts: it is a response, not a slow request
        started = time.monotonic()
        with client.stream("GET", "/api/events", params={"max_seconds": 4}) as stream:
            assert stream.status_code == 200
            body = b"".join(stream.iter_bytes())
        assert b": connected" in body and time.monotonic() - started >= 3.5
        # a body sent in slow pieces that arrive within the body timeout is fine
        with connect(backend) as sock:
            payload = json.dumps({"name": "bagbot.noop"}).encode()
            sock.sendall(b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Connection: close\r\nContent-Length: " + str(len(payload)).encode() + b"\r\n\r\n")
            for piece in (payload[:5], payload[5:]):
                sock.sendall(piece)
                time.sleep(0.3)
            received, _ = read_until_closed(sock)
        assert received.startswith(b"HTTP/1.1 201 "), received[:200]
