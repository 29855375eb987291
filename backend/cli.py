"""`bagbot`: the operator's command line — run the services, inspect and steer jobs, check a deployment.

Local commands talk to the job store through the JobStore contract, so they
need `JOB_STORE=redis` and the same `REDIS_URL`/`BAGBOT_PREFIX` as the
services; with `--url` they talk to a running backend's HTTP API instead (the
only way to see a memory store, which lives inside the backend process).

Exit codes (see `ExitCode`): 0 ok; 1 a check or the smoke test failed, or the
job waited for ended failed/cancelled; 2 usage or configuration error;
3 Redis or the backend unreachable; 4 job not found; 5 illegal transition or
Redis out of memory.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from backend.config import ConfigError, Settings
from backend.ops import bench as bench_command
from backend.ops.client import Client, ExitCode, JSONDict, OpsError
from backend.ops.http_client import HttpClient
from backend.ops.store_client import StoreClient, map_store_error
from backend.workers.models import ALL_STATES, TERMINAL_STATES
from backend.workers.rules import DEFAULT_MAX_ATTEMPTS

T = TypeVar("T")

app = typer.Typer(
    name="bagbot",
    help="Durable background jobs on Redis: run the services, inspect jobs, verify a deployment.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    epilog="Exit codes: 0 ok, 1 check/smoke/job failed, 2 usage or config error, 3 store unavailable, "
    "4 not found, 5 illegal transition or store full.",
)
jobs_app = typer.Typer(help="List, show, retry and cancel jobs.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")

# piped output is not cut to 80 columns: ids and errors stay whole for grep and logs
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts) instead of tables.")]
UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url", envvar="BAGBOT_URL", help="Base URL of a backend to talk to over HTTP instead of the store."
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="BAGBOT_API_TOKEN",
        show_envvar=True,
        help="Bearer token for --url.",
        show_default=False,
    ),
]
QueueOpt = Annotated[
    str | None, typer.Option("--queue", "-q", help="Queue name (default: search every queue).")
]


# -- plumbing ------------------------------------------------------------------------------


def _fail(message: str, code: ExitCode) -> typer.Exit:
    err.print(Text("error: ", style="bold red") + Text(message))
    return typer.Exit(int(code))


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise _fail(str(exc), ExitCode.USAGE) from None


def _client(url: str | None, token: str | None, allow_memory: bool = False) -> Client:
    if url:
        return HttpClient(url, token)
    settings = _settings()
    if settings.job_store == "memory" and not allow_memory:
        raise OpsError(
            "JOB_STORE=memory keeps jobs inside the backend process, out of this command's reach: "
            "pass --url http://HOST:PORT of the backend, or set JOB_STORE=redis and REDIS_URL",
            ExitCode.USAGE,
        )
    from backend.workers.stores import create_job_store

    return StoreClient(create_job_store(settings), settings.safe_redis_url)


def _run(url: str | None, token: str | None, action: Callable[[Client], Awaitable[T]]) -> T:
    """Open a client, run `action`, close it; turn every known error into its exit code."""

    async def main() -> T:
        client = _client(url, token)
        try:
            return await action(client)
        finally:
            await client.close()

    try:
        return asyncio.run(main())
    except OpsError as exc:
        raise _fail(str(exc), exc.code) from None
    except Exception as exc:
        mapped = map_store_error(exc, url or "the job store")
        if mapped is None:
            raise
        raise _fail(str(mapped), mapped.code) from None


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")


def _parse_arg(raw: str) -> Any:
    """ARGS are JSON when they parse as JSON (1, true, {"a": 1}), else plain strings."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _age(epoch: Any) -> str:
    if not isinstance(epoch, int | float) or not epoch:
        return "-"
    seconds = max(0.0, time.time() - float(epoch))
    if seconds < 120:
        return f"{seconds:.1f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


STATE_STYLE = {
    "done": "green",
    "failed": "red",
    "cancelled": "dim",
    "running": "cyan",
    "enqueued": "yellow",
    "scheduled": "blue",
    "retry_scheduled": "magenta",
}


def _state(state: Any) -> Text:
    return Text(str(state), style=STATE_STYLE.get(str(state), ""))


def _error_text(job: JSONDict) -> str:
    error = job.get("last_error")
    if not isinstance(error, dict):
        return ""
    return f"{error.get('type', '')}: {error.get('message', '')}"


# -- services -------------------------------------------------------------------------------


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default BAGBOT_HOST, 0.0.0.0).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default PORT, 8000).")] = None,
) -> None:
    """Run the backend (API, metrics, dashboard). With JOB_STORE=memory it runs an embedded worker too."""
    settings = _settings()
    import uvicorn

    bind_host = host or settings.host
    bind_port = port or settings.port
    shown = "127.0.0.1" if bind_host in ("0.0.0.0", "::") else bind_host
    err.print(f"bagbot backend ({settings.job_store} store) on http://{shown}:{bind_port}/  (dashboard at /)")
    uvicorn.run(
        "backend.api.app:app",
        host=bind_host,
        port=bind_port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=max(1, int(settings.shutdown_grace_seconds)),
    )


@app.command()
def worker() -> None:
    """Run one worker process, configured from the environment (same as `python -m backend.workers`)."""
    from backend.workers.__main__ import _exit
    from backend.workers.__main__ import main as worker_main

    # its own exit path: it does not wait for threads of sync handlers that ignored the shutdown
    _exit(worker_main())


# -- producing ------------------------------------------------------------------------------


@app.command()
def enqueue(
    name: Annotated[str, typer.Argument(help="Handler name, e.g. bagbot.echo.")],
    args: Annotated[
        list[str] | None, typer.Argument(help="Positional args; each is JSON if it parses, else a string.")
    ] = None,
    kwargs: Annotated[
        str | None, typer.Option("--kwargs", help="Keyword args as a JSON object, e.g. '{\"times\": 1}'.")
    ] = None,
    queue: Annotated[str, typer.Option("--queue", "-q")] = "default",
    delay: Annotated[
        float | None, typer.Option(help="Run no earlier than this many seconds from now.")
    ] = None,
    priority: Annotated[int, typer.Option(help="Higher runs first (-1000..1000).")] = 0,
    max_attempts: Annotated[int, typer.Option(help="Runs before the job is failed.")] = DEFAULT_MAX_ATTEMPTS,
    timeout: Annotated[
        float | None, typer.Option(help="Seconds a run may take (default: the handler's).")
    ] = None,
    unique_key: Annotated[
        str | None, typer.Option(help="At most one live job per key in this queue.")
    ] = None,
    job_id: Annotated[
        str | None, typer.Option("--id", help="Your own job id: enqueueing it again is a no-op.")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Show progress until the job ends; exit 1 if it failed.")
    ] = False,
    wait_timeout: Annotated[
        float | None, typer.Option(help="Give up waiting after this many seconds.")
    ] = None,
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Enqueue a job. Put `--` before ARGS that start with a dash: `bagbot enqueue bagbot.echo -- -1`."""
    try:
        parsed_kwargs = json.loads(kwargs) if kwargs else {}
    except ValueError as exc:
        raise _fail(f"--kwargs is not JSON: {exc}", ExitCode.USAGE) from None
    if not isinstance(parsed_kwargs, dict):
        raise _fail("--kwargs must be a JSON object", ExitCode.USAGE)
    body: JSONDict = {
        "name": name,
        "args": [_parse_arg(a) for a in args or []],
        "kwargs": parsed_kwargs,
        "queue": queue,
        "delay": delay,
        "priority": priority,
        "max_attempts": max_attempts,
        "timeout": timeout,
        "unique_key": unique_key,
        "id": job_id,
    }

    if wait:
        body["events"] = True  # its state changes and progress wake the wait at once

    async def action(client: Client) -> JSONDict:
        job = await client.enqueue(body)
        if not wait:
            return job
        if not json_out:
            out.print(f"enqueued {job['id']} on {job.get('queue')}")
        return await _wait_for(client, job, wait_timeout)

    job = _run(url, token, action)
    if json_out:
        _print_json(job)
    elif not wait:
        out.print(Text.assemble(f"enqueued {job['id']} on {job.get('queue')}: ", _state(job.get("state"))))
    else:
        _print_outcome(job)
    if wait and job.get("state") != "done":
        raise typer.Exit(int(ExitCode.FAILED))


async def _wait_for(client: Client, job: JSONDict, limit: float | None) -> JSONDict:
    """Follow the job until it is terminal, with a live status line (state, attempt, progress) on
    stderr: woken by its events when the client can subscribe, else by polling."""
    started = time.monotonic()
    terminal = {s.value for s in TERMINAL_STATES}
    with err.status(f"{job['id']}: {job.get('state')}") as status:
        while str(job.get("state")) not in terminal:
            if limit is not None and time.monotonic() - started > limit:
                raise OpsError(
                    f"gave up after {limit:g}s: job {job['id']} is still {job.get('state')}", ExitCode.FAILED
                )
            await client.wait_change(job)
            events = job.get("events")
            job = await client.get(str(job["id"]), str(job.get("queue") or "") or None)
            job.setdefault("events", events)
            elapsed = time.monotonic() - started
            status.update(
                f"{job['id']}: {job.get('state')}  attempt {job.get('attempts')}/{job.get('max_attempts')}  "
                f"{_progress_text(job)}{elapsed:.1f}s"
            )
    return job


def _progress_text(job: JSONDict) -> str:
    """`45% step 3 of 7  ` (values in 0..1 read as a fraction), or "" before any progress."""
    value = job.get("progress")
    if value is None:
        return ""
    shown = f"{float(value) * 100:.0f}%" if 0 <= float(value) <= 1 else f"{float(value):g}"
    message = str(job.get("progress_message") or "")[:60]
    return f"{shown} {message}".rstrip() + "  "


def _print_outcome(job: JSONDict) -> None:
    state = str(job.get("state"))
    out.print(Text.assemble(f"{job['id']} ", _state(state), f" after {job.get('attempts')} attempt(s)"))
    if state == "done":
        out.print(json.dumps(job.get("result"), ensure_ascii=False), markup=False)
    elif job.get("last_error"):
        out.print(Text(_error_text(job), style="red"))


# -- jobs -------------------------------------------------------------------------------------


@jobs_app.command("list")
def jobs_list(
    queue: QueueOpt = None,
    state: Annotated[
        str | None, typer.Option(help=f"One of: {', '.join(s.value for s in ALL_STATES)}.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Handler name.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
    cursor: Annotated[str | None, typer.Option(help="Cursor printed by the previous page.")] = None,
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """List jobs, newest first."""
    if state is not None and state not in {s.value for s in ALL_STATES}:
        raise _fail(f"unknown state {state!r}", ExitCode.USAGE)
    page = _run(url, token, lambda c: c.list_jobs(queue, state, name, limit, cursor))
    if json_out:
        _print_json({"jobs": page.jobs, "cursor": page.cursor})
        return
    table = Table(box=None, header_style="bold")
    for column in ("id", "queue", "name", "state", "attempts", "created", "last error"):
        table.add_column(column, overflow="fold")
    for job in page.jobs:
        table.add_row(
            str(job.get("id")),
            str(job.get("queue")),
            str(job.get("name")),
            _state(job.get("state")),
            f"{job.get('attempts')}/{job.get('max_attempts')}",
            _age(job.get("created_at")),
            _error_text(job)[:60],
        )
    out.print(table)
    if page.cursor:
        out.print(f"more: --cursor {shlex.quote(page.cursor)}")


@jobs_app.command("show")
def jobs_show(
    job_id: Annotated[str, typer.Argument(metavar="ID")],
    queue: QueueOpt = None,
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Show one job with its result or last error."""
    job = _run(url, token, lambda c: c.get(job_id, queue))
    if json_out:
        _print_json(job)
        return
    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in job.items():
        if key == "state":
            table.add_row(key, _state(value))
        elif key.endswith("_at") or key == "lease_until":
            table.add_row(key, "-" if value is None else f"{value}  ({_age(value)})")
        elif key == "last_error" and isinstance(value, dict):
            table.add_row(key, Text(f"{value.get('type')}: {value.get('message')}", style="red"))
            if value.get("traceback"):
                table.add_row("traceback", Text(str(value["traceback"]), style="dim"))
        else:
            table.add_row(key, Text(json.dumps(value, ensure_ascii=False, default=str)))
    out.print(table)


@jobs_app.command("retry")
def jobs_retry(
    job_id: Annotated[str, typer.Argument(metavar="ID")],
    queue: QueueOpt = None,
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Put a failed or cancelled job back in its queue (attempts reset to 0)."""
    _print_transition(_run(url, token, lambda c: c.retry(job_id, queue)), json_out)


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: Annotated[str, typer.Argument(metavar="ID")],
    queue: QueueOpt = None,
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Cancel a job: at once if it has not started (enqueued, scheduled or retry_scheduled); a
    running job is asked to stop (its worker cancels it within a heartbeat, it ends cancelled)."""
    _print_transition(_run(url, token, lambda c: c.cancel(job_id, queue)), json_out)


def _print_transition(job: JSONDict, json_out: bool) -> None:
    if json_out:
        _print_json(job)
        return
    asked = ""
    if job.get("cancel_requested"):
        asked = " (cancel requested: its worker stops it within a heartbeat)"
    out.print(Text.assemble(f"{job['id']}: ", _state(job.get("state")), asked))


# -- queues, workers, purge ----------------------------------------------------------------------


@app.command()
def queues(json_out: JsonOpt = False, url: UrlOpt = None, token: TokenOpt = None) -> None:
    """Every queue with its number of jobs in each state."""
    counts = _run(url, token, lambda c: c.counts())
    if json_out:
        _print_json(counts)
        return
    table = Table(box=None, header_style="bold")
    table.add_column("queue")
    for state in ALL_STATES:
        table.add_column(state.value, justify="right", style=STATE_STYLE.get(state.value, ""))
    for queue_name, by_state in sorted(counts.items()):
        table.add_row(queue_name, *(str(by_state.get(s.value, 0)) for s in ALL_STATES))
    out.print(table if counts else "no queues yet")


@app.command()
def schedules(json_out: JsonOpt = False, url: UrlOpt = None, token: TokenOpt = None) -> None:
    """Periodic jobs the workers declare, with their next fire time (docs/features.md)."""
    listed = _run(url, token, lambda c: c.schedules())
    if json_out:
        _print_json(listed)
        return
    table = Table(box=None, header_style="bold")
    for column in ("name", "handler", "queue", "schedule", "time zone", "next fire (UTC)"):
        table.add_column(column, overflow="fold")
    for entry in listed:
        nxt = entry.get("next_fire")
        when = "never" if nxt is None else f"{datetime.fromtimestamp(float(nxt), UTC):%Y-%m-%d %H:%M:%S}"
        table.add_row(str(entry.get("name")), str(entry.get("handler")), str(entry.get("queue")),
                      str(entry.get("expression")), str(entry.get("timezone")), when)
    out.print(table if listed else "no schedules declared (workers publish theirs when they start)")


@app.command()
def workers(json_out: JsonOpt = False, url: UrlOpt = None, token: TokenOpt = None) -> None:
    """Registered workers with their heartbeat age (stale ones in red)."""
    listed = _run(url, token, lambda c: c.workers())
    if json_out:
        _print_json(listed)
        return
    lease = _settings().lease_seconds if not url else 30.0
    table = Table(box=None, header_style="bold")
    for column in ("id", "host", "pid", "queues", "running", "heartbeat age", "started"):
        table.add_column(column, overflow="fold")
    for info in listed:
        age = float(info.get("heartbeat_age") or 0.0)
        table.add_row(
            str(info.get("id")),
            str(info.get("host")),
            str(info.get("pid")),
            ",".join(info.get("queues") or []),
            f"{info.get('running')}/{info.get('concurrency')}",
            Text(f"{age:.1f}s", style="red" if age > lease else "green"),
            _age(info.get("started_at")),
        )
    out.print(table if listed else "no workers registered")


@app.command()
def purge(
    older_than: Annotated[float, typer.Option("--older-than", min=0, help="Seconds since the job finished.")],
    queue: Annotated[
        list[str] | None, typer.Option("--queue", "-q", help="Only these queues (repeatable).")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Delete terminal jobs (done, failed, cancelled) that finished more than --older-than seconds ago."""
    settings = _settings()
    if not yes:
        where = f"{settings.safe_redis_url} (prefix {settings.prefix})"
        scope = ", ".join(queue) if queue else "every queue"
        if not typer.confirm(
            f"Delete terminal jobs finished over {older_than:g}s ago in {scope} at {where}?", err=True
        ):
            err.print("nothing deleted")
            raise typer.Exit(int(ExitCode.FAILED))
    count = _run(None, None, lambda c: c.purge(older_than, list(queue) if queue else None))
    _print_json({"purged": count}) if json_out else out.print(f"purged {count} job(s)")


# -- checks -------------------------------------------------------------------------------------


@app.command()
def check(json_out: JsonOpt = False) -> None:
    """Check that REDIS_URL answers and keeps jobs safe (maxmemory-policy noeviction)."""
    from backend.ops.redis_check import check_redis

    settings = _settings()
    report = asyncio.run(check_redis(settings.redis_url, settings.prefix))
    if json_out:
        _print_json(report.to_json())
    else:
        _print_check(report)
    if not report.reachable:
        raise typer.Exit(int(ExitCode.UNAVAILABLE))
    if not report.ok:
        raise typer.Exit(int(ExitCode.FAILED))


def _print_check(report: Any) -> None:
    out.print(f"Redis at {report.url}")
    if report.reachable:
        policy_style = "green" if report.maxmemory_policy == "noeviction" else "red"
        limit = f"{report.maxmemory} bytes" if report.maxmemory else "no limit"
        keys = f"{report.keys}" if report.keys_complete else f"at least {report.keys} (scan stopped early)"
        rows = [
            ("server", Text(f"{report.server} {report.version}")),
            ("maxmemory-policy", Text(report.maxmemory_policy or "unknown", style=policy_style)),
            ("used memory", Text(f"{report.used_memory_human or report.used_memory} (maxmemory: {limit})")),
            (f"keys {report.prefix}:*", Text(keys)),
        ]
        for label, value in rows:
            out.print(Text.assemble(f"  {label:<20}", value))
    for warning in report.warnings:
        out.print(Text(f"! {warning}", style="yellow"))
    if report.ok:
        out.print(Text("✓ Redis answers and will not evict jobs", style="green"))
    else:
        out.print(Text(f"✗ {report.reason}", style="red"))


@app.command()
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

    async def main() -> Any:
        client = _client(url, token, allow_memory=True)
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
        raise _fail(str(exc), exc.code) from None
    if json_out:
        _print_json(result.to_json())
    else:
        out.print(Text("Validation Checklist", style="bold"))
        for item in result.items:
            mark = Text("✓ ", style="green") if item.ok else Text("✗ ", style="red")
            out.print(Text.assemble(mark, item.label, Text(f"  — {item.detail}", style="dim")))
        out.print(f"smoke run {result.run_id}: {'all checks passed' if result.ok else 'FAILED'}")
    if not result.ok:
        raise typer.Exit(int(ExitCode.FAILED))


async def _maybe_embedded_worker(client: Client, url: str | None) -> Callable[[], Awaitable[None]] | None:
    """Without --url and with the memory store nothing else can run the jobs: run a worker here."""
    if url or not isinstance(client, StoreClient) or not client.store.needs_embedded_worker:
        return None
    from backend.workers.orchestration import Worker

    runner = Worker(client.store, _settings())
    task = asyncio.create_task(runner.run())

    async def stop() -> None:
        runner.request_stop()
        await task

    return stop


def main() -> None:
    """Console-script entry point."""
    bench_command.register(app)
    app()


if __name__ == "__main__":
    main()
