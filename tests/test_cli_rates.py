"""`bagbot queues rate` as a real subprocess: on the store (REDIS_URL) and over HTTP with a token;
bad rates are usage errors (exit 2) before anything is sent."""

from __future__ import annotations

from pathlib import Path

from backend.workers.redis_job_store import RedisJobStore
from tests.redis_server import free_port
from tests.test_cli import Service, as_json, bagbot, env, health_ok, make_env
from tests.test_cli_bulk import on_store

__all__ = ["env"]


def rates(env: dict[str, str]) -> dict[str, str]:
    async def read(store: RedisJobStore) -> dict[str, str]:
        return await store.queue_rates()

    return on_store(env, read)


def test_queues_rate_show_set_clear(env: dict[str, str]) -> None:
    assert as_json(bagbot(env, "queues", "rate", "mail", "--json")) == {"queue": "mail", "rate": None}
    shown = bagbot(env, "queues", "rate", "mail", "100/S")
    assert shown.returncode == 0, shown.stderr
    assert "at most 100/s" in shown.stdout and "0.01 s" in shown.stdout
    assert rates(env) == {"mail": "100/s"}
    table = bagbot(env, "queues")
    assert table.returncode == 0 and "mail (rate 100/s)" in table.stdout, table.stdout + table.stderr
    assert as_json(bagbot(env, "queues", "rate", "mail", "--json")) == {"queue": "mail", "rate": "100/s"}
    cleared = bagbot(env, "queues", "rate", "mail", "--clear", "--json")
    assert as_json(cleared) == {"queue": "mail", "rate": None}
    assert rates(env) == {}
    for bad in ("NaN", "-1/s", "0/s", "100", "1/0s", "1e9/s/s"):
        result = bagbot(env, "queues", "rate", "mail", bad)
        assert result.returncode == 2 and "rate" in result.stderr, (bad, result.stderr)
    both = bagbot(env, "queues", "rate", "mail", "1/s", "--clear")
    assert both.returncode == 2
    assert rates(env) == {}


def test_queues_rate_over_http_needs_the_token(env: dict[str, str], tmp_path: Path) -> None:
    port, token = free_port(), "rate-cli-token"
    backend = Service({**env, "PORT": str(port), "BAGBOT_API_TOKEN": token}, ["serve"], tmp_path / "api.log")
    try:
        backend.wait_until(lambda: health_ok(port), "backend health")
        url = f"http://127.0.0.1:{port}"
        client = make_env()
        denied = bagbot(client, "queues", "rate", "default", "5/m", "--url", url)
        assert denied.returncode == 2 and "401" in denied.stderr
        auth = ("--url", url, "--token", token)
        assert as_json(bagbot(client, "queues", "rate", "default", "5/m", "--json", *auth))["rate"] == "5/m"
        assert as_json(bagbot(client, "queues", "rate", "default", "--json", *auth))["rate"] == "5/m"
        assert rates(env) == {"default": "5/m"}
        cleared = bagbot(client, "queues", *auth, "rate", "default", "--clear", "--json")
        assert as_json(cleared)["rate"] is None
        assert rates(env) == {}
    finally:
        backend.stop()
