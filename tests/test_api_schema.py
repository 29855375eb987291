"""Property-based run over the OpenAPI schema: whatever a client sends, the backend never answers 500.

Schemathesis generates valid and invalid requests for every operation from
/openapi.json and sends them to a real uvicorn backend on a real Redis
(a random key prefix). Each response must be a non-5xx (503/507 excepted:
they mean the store is down or full, which it is not here), with the
content type and body shape the schema documents. Bounded to a few hundred cases.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import content_type_conformance, not_a_server_error, response_schema_conformance

from backend.api.app import create_app
from backend.config import Settings
from tests.api_server import BackendProcess, delete_prefix

pytestmark = [pytest.mark.slow, pytest.mark.redis_only]


@pytest.fixture(scope="module")
def backend(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendProcess]:
    prefix = f"bbtest-{uuid.uuid4().hex[:10]}"
    env = {"JOB_STORE": "redis", "REDIS_URL": redis_url, "BAGBOT_PREFIX": prefix}
    server = BackendProcess(tmp_path_factory.mktemp("schema"), env)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
        asyncio.run(delete_prefix(redis_url, prefix))
        log = server.log()
        assert "Traceback" not in log, log[-5000:]


@pytest.fixture(scope="module")
def api_schema(backend: BackendProcess) -> Any:
    return schemathesis.openapi.from_url(backend.base_url + "/openapi.json")


def _operations() -> list[tuple[str, str]]:
    """(method, path) of every documented operation, read from the app without starting it."""
    paths = create_app(Settings()).openapi()["paths"]
    return [(method.upper(), path) for path, item in sorted(paths.items()) for method in sorted(item)]


# One test per operation, each its own Hypothesis run. (schemathesis.pytest.from_fixture would
# do this too, but its lazy loader does not work with pytest 9 yet.)
@pytest.mark.parametrize(("method", "path"), _operations())
def test_no_request_makes_the_api_fail(api_schema: Any, method: str, path: str) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy())
    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def check(case: Any) -> None:  # a schemathesis.Case
        case.call_and_validate(
            checks=[not_a_server_error, content_type_conformance, response_schema_conformance], timeout=30
        )

    check()


def test_the_log_has_no_unhandled_errors(backend: BackendProcess) -> None:
    """Runs after the generated cases (same module): nothing reached the server's error log."""
    assert "Exception in ASGI application" not in backend.log()
    assert Path(backend.log_path).exists()
