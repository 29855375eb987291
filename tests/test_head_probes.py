"""Uptime monitors send HEAD: /api/health and /api/metrics answer it like GET, without a body,
on a real uvicorn (which is what drops the body) in front of a real Redis."""

from __future__ import annotations

import asyncio
import http.client
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api_server import BackendProcess, delete_prefix


@pytest.fixture
def backend(redis_url: str, tmp_path: Path) -> Iterator[BackendProcess]:
    prefix = f"bbtest-{uuid.uuid4().hex[:10]}"
    server = BackendProcess(tmp_path, {"JOB_STORE": "redis", "REDIS_URL": redis_url, "BAGBOT_PREFIX": prefix})
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
        asyncio.run(delete_prefix(redis_url, prefix))


def request(server: BackendProcess, method: str, path: str) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.getheader("content-type") or "", response.read()
    finally:
        conn.close()


@pytest.mark.parametrize("path", ["/api/health", "/api/metrics"])
def test_head_answers_like_get_without_a_body(backend: BackendProcess, path: str) -> None:
    got_status, got_type, got_body = request(backend, "GET", path)
    head_status, head_type, head_body = request(backend, "HEAD", path)
    assert got_status == head_status == 200
    assert head_type == got_type and got_body
    assert head_body == b""
