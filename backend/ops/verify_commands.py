"""`bagbot check` and `bagbot smoke`: is a deployment fit to hold and run jobs?

`check` asks the Redis server itself (`redis_check.py`); `smoke` runs diagnostic jobs through
the store or a backend and judges the staging guide's checklist (`smoke.py`). Both are
imported only when run, so the other commands do not pay for them.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from backend.ops.cli_support import JsonOpt, TokenOpt, err, fail, load_settings, open_client, print_json
from backend.ops.client import Client, ExitCode, OpsError
from backend.ops.render import print_check, print_checklist
from backend.ops.store_client import StoreClient

if TYPE_CHECKING:
    from backend.ops.smoke import SmokeResult


def _what_check_checks(env: Mapping[str, str], url: str, job_store: str) -> list[str]:
    """Say which Redis `check` looks at when the environment did not name one, and why."""
    lines = []
    if not env.get("REDIS_URL"):
        lines.append(f"REDIS_URL is not set, so this checks the default {url}; set REDIS_URL to the "
                     "Redis your backend and workers use")
    if job_store != "redis":
        lines.append(f"JOB_STORE is {job_store!r}: the services keep jobs in the backend process and use no "
                     "Redis until JOB_STORE=redis; this checks the Redis they would use")
    return lines


def check(json_out: JsonOpt = False) -> None:
    """Check that REDIS_URL answers and keeps jobs safe (maxmemory-policy noeviction)."""
    from backend.ops.redis_check import check_redis

    settings = load_settings()
    for line in _what_check_checks(os.environ, settings.safe_redis_url, settings.job_store):
        err.print(Text("note: ", style="bold") + Text(line))
    report = asyncio.run(check_redis(settings.redis_url, settings.prefix))
    if json_out:
        print_json(report.to_json())
    else:
        print_check(report)
    if not report.reachable:
        raise typer.Exit(int(ExitCode.UNAVAILABLE))
    if not report.ok:
        raise typer.Exit(int(ExitCode.FAILED))


def smoke(
    url: Annotated[
        str | None,
        typer.Option(
            "--url", envvar="BAGBOT_URL", help="Backend base URL, e.g. https://bagbot-backend.onrender.com."
        ),
    ] = None,
    token: TokenOpt = None,
    queue: Annotated[str, typer.Option("--queue", "-q", help="A queue the workers listen on.")] = "default",
    jobs: Annotated[
        int, typer.Option("--jobs", min=1, max=500, help="How many noop jobs test exclusive claiming.")
    ] = 10,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the workers.")] = 60.0,
    max_heartbeat_age: Annotated[
        float, typer.Option(help="Oldest heartbeat that counts as live (s).")
    ] = 30.0,
    json_out: JsonOpt = False,
) -> None:
    """Post-deployment verification: run diagnostic jobs and print the guide's validation checklist."""
    from backend.ops.smoke import SmokeOptions, run_smoke

    options = SmokeOptions(queue=queue, noop_jobs=jobs, timeout=timeout, max_heartbeat_age=max_heartbeat_age)

    async def main() -> SmokeResult:
        client = open_client(url, token, allow_memory=True)
        embedded = await _maybe_embedded_worker(client, url)
        options.expect_redis = embedded is None
        try:
            with err.status("smoke: starting") as status:
                return await run_smoke(client, options, lambda text: status.update(f"smoke: {text}"))
        finally:
            if embedded is not None:
                await embedded()
            await client.close()

    try:
        result = asyncio.run(main())
    except OpsError as exc:
        raise fail(str(exc), exc.code) from None
    if json_out:
        print_json(result.to_json())
    else:
        print_checklist(result)
    if not result.ok:
        raise typer.Exit(int(ExitCode.FAILED))


async def _maybe_embedded_worker(client: Client, url: str | None) -> Callable[[], Awaitable[None]] | None:
    """Without --url and with the memory store nothing else can run the jobs: run a worker here."""
    if url or not isinstance(client, StoreClient) or not client.store.needs_embedded_worker:
        return None
    from backend.workers.orchestration import Worker

    runner = Worker(client.store, load_settings())
    task = asyncio.create_task(runner.run())

    async def stop() -> None:
        runner.request_stop()
        await task

    return stop
