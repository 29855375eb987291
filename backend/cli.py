"""`bagbot`: the operator's command line — run the services, inspect and steer jobs, check a deployment.

Local commands talk to the job store through the JobStore contract, so they
need `JOB_STORE=redis` and the same `REDIS_URL`/`BAGBOT_PREFIX` as the
services; with `--url` they talk to a running backend's HTTP API instead (the
only way to see a memory store, which lives inside the backend process).

Exit codes (see `ExitCode`): 0 ok; 1 a check or the smoke test failed, or the
job waited for ended failed/cancelled; 2 usage or configuration error;
3 Redis or the backend unreachable; 4 job not found; 5 illegal transition or
Redis out of memory.

This module is the app and its table of contents: the services and the store-wide commands
are here; `enqueue` and `jobs ...` are in `backend/ops/job_commands.py`, `check` and `smoke`
in `backend/ops/verify_commands.py`, `bench` in `backend/ops/bench.py`, and how everything
is shown in `backend/ops/render.py`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from backend.ops import bench
from backend.ops.bulk_commands import purge_all, queues_app
from backend.ops.cli_support import JsonOpt, TokenOpt, UrlOpt, err, load_settings, out, print_json, run
from backend.ops.client import Client, ExitCode
from backend.ops.job_commands import enqueue, jobs_app
from backend.ops.render import progress_text as _progress_text
from backend.ops.render import queues_table, schedules_table, workers_table
from backend.ops.verify_commands import check, smoke

__all__ = ["_progress_text", "app", "main"]  # tests import _progress_text from here

app = typer.Typer(
    name="bagbot",
    help="Durable background jobs on Redis: run the services, inspect jobs, verify a deployment.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    epilog="Exit codes: 0 ok, 1 check/smoke/job failed, 2 usage or config error, 3 store unavailable, "
    "4 not found, 5 illegal transition or store full.",
)


# -- services -------------------------------------------------------------------------------


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default BAGBOT_HOST, 0.0.0.0).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default PORT, 8000).")] = None,
) -> None:
    """Run the backend (API, metrics, dashboard). With JOB_STORE=memory it runs an embedded worker too."""
    settings = load_settings()
    import uvicorn

    bind_host = host or settings.host
    bind_port = port or settings.port
    shown = "127.0.0.1" if bind_host in ("0.0.0.0", "::") else bind_host
    err.print(f"bagbot backend ({settings.job_store} store) on http://{shown}:{bind_port}/  (dashboard at /)")
    from backend.api.serving import TimedHttpToolsProtocol

    uvicorn.run(
        "backend.api.app:app",
        host=bind_host,
        port=bind_port,
        http=TimedHttpToolsProtocol,  # slow clients cannot hold connections (docs/deployment.md)
        timeout_keep_alive=5,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=max(1, int(settings.shutdown_grace_seconds)),
    )


def worker() -> None:
    """Run one worker process, configured from the environment (same as `python -m backend.workers`)."""
    from backend.workers.__main__ import _exit
    from backend.workers.__main__ import main as worker_main

    # its own exit path: it does not wait for threads of sync handlers that ignored the shutdown
    _exit(worker_main())


# -- queues, workers, purge ----------------------------------------------------------------------


def queues(ctx: typer.Context, json_out: JsonOpt = False, url: UrlOpt = None, token: TokenOpt = None) -> None:
    """Every queue with its number of jobs in each state and whether it is paused; `bagbot queues
    pause|resume QUEUE` steers one (backend/ops/bulk_commands.py)."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"url": url, "token": token}
        return

    async def read(client: Client) -> tuple[dict[str, dict[str, int]], set[str]]:
        return await client.counts(), await client.paused()

    counts, paused = run(url, token, read)
    if json_out:
        print_json(counts)
        return
    out.print(queues_table(counts, paused) if counts else "no queues yet")


def schedules(json_out: JsonOpt = False, url: UrlOpt = None, token: TokenOpt = None) -> None:
    """Periodic jobs the workers declare, with their next fire time (docs/features.md)."""
    listed = run(url, token, lambda c: c.schedules())
    if json_out:
        print_json(listed)
        return
    none = "no schedules declared (workers publish theirs when they start)"
    out.print(schedules_table(listed) if listed else none)


def workers(json_out: JsonOpt = False, url: UrlOpt = None, token: TokenOpt = None) -> None:
    """Registered workers with their heartbeat age (stale ones in red)."""
    listed = run(url, token, lambda c: c.workers())
    if json_out:
        print_json(listed)
        return
    lease = load_settings().lease_seconds if not url else 30.0
    out.print(workers_table(listed, lease) if listed else "no workers registered")


def purge(
    older_than: Annotated[float, typer.Option("--older-than", min=0, help="Seconds since the job finished.")],
    queue: Annotated[
        list[str] | None, typer.Option("--queue", "-q", help="Only these queues (repeatable).")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Delete terminal jobs (done, failed, cancelled) that finished more than --older-than seconds ago."""
    settings = load_settings()
    if not yes:
        where = f"{settings.safe_redis_url} (prefix {settings.prefix})"
        scope = ", ".join(queue) if queue else "every queue"
        if not typer.confirm(
            f"Delete terminal jobs finished over {older_than:g}s ago in {scope} at {where}?", err=True
        ):
            err.print("nothing deleted")
            raise typer.Exit(int(ExitCode.FAILED))
    count = run(None, None, lambda c: purge_all(c, older_than, list(queue) if queue else None, None))
    print_json({"purged": count}) if json_out else out.print(f"purged {count} job(s)")


# -- the command line -----------------------------------------------------------------------------

# registered in this order, the order `bagbot --help` lists them in; `jobs` comes after the commands
for command in (serve, worker, enqueue):
    app.command()(command)
queues_app.callback(invoke_without_command=True)(queues)
app.add_typer(queues_app, name="queues")
for later in (schedules, workers, purge, check, smoke):
    app.command()(later)
app.add_typer(jobs_app, name="jobs")
bench.register(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
