"""`bagbot enqueue` and `bagbot jobs list|show|retry|cancel|purge`: making jobs and steering them
(one job here; many, by a filter, in `bulk_commands.py`).

`backend/cli.py` registers `enqueue` on the `bagbot` app and mounts `jobs_app` as `bagbot jobs`.
"""

from __future__ import annotations

import json
import shlex
import time
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.text import Text

from backend.ops.bulk_commands import (
    AllOpt,
    LimitOpt,
    NameOpt,
    StateOpt,
    YesOpt,
    bulk_command,
    jobs_purge,
)
from backend.ops.cli_support import JsonOpt, QueueOpt, TokenOpt, UrlOpt, err, fail, out, print_json, run
from backend.ops.client import Client, ExitCode, JSONDict, OpsError, Page
from backend.ops.render import job_detail, jobs_table, print_outcome, progress_text, state_pill
from backend.workers.models import ALL_STATES, TERMINAL_STATES
from backend.workers.rules import DEFAULT_MAX_ATTEMPTS, InvalidJobError, validate_queue

jobs_app = typer.Typer(help="List, show, retry, cancel and purge jobs.", no_args_is_help=True)


def check_queue(queue: str | None) -> None:
    """A queue name that can never exist is a usage error in one line, before any request."""
    if queue is not None:
        try:
            validate_queue(queue)
        except InvalidJobError as exc:
            raise fail(f"--queue: {exc}", ExitCode.USAGE) from None


def parse_run_at(raw: str) -> str:
    """--run-at as an ISO time with its zone (normalised); no zone is refused, since guessing
    it runs the job hours off."""
    try:
        when = datetime.fromisoformat(raw.strip())
    except ValueError:
        message = f"--run-at {raw!r} is not an ISO 8601 time, e.g. 2026-12-01T09:00:00Z"
        raise fail(message, ExitCode.USAGE) from None
    if when.utcoffset() is None:
        raise fail(
            f"--run-at {raw!r} has no time zone: add one, e.g. {when.isoformat()}Z or …+01:00",
            ExitCode.USAGE,
        )
    return when.isoformat()


def _parse_arg(raw: str) -> Any:
    """ARGS are JSON when they parse as JSON (1, true, {"a": 1}), else plain strings."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


# -- producing ------------------------------------------------------------------------------


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
    run_at: Annotated[
        str | None,
        typer.Option(help="Run no earlier than this ISO 8601 time with its zone, e.g. 2026-12-01T09:00:00Z."),
    ] = None,
    priority: Annotated[int, typer.Option(help="Higher runs first (-1000..1000).")] = 0,
    max_attempts: Annotated[int | None, typer.Option(
        help=f"Runs before the job is failed (default: the handler's, else {DEFAULT_MAX_ATTEMPTS}).")] = None,
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
        raise fail(f"--kwargs is not JSON: {exc}", ExitCode.USAGE) from None
    if not isinstance(parsed_kwargs, dict):
        raise fail("--kwargs must be a JSON object", ExitCode.USAGE)
    check_queue(queue)
    body: JSONDict = {
        "name": name,
        "args": [_parse_arg(a) for a in args or []],
        "kwargs": parsed_kwargs,
        "queue": queue,
        "delay": delay,
        "run_at": parse_run_at(run_at) if run_at is not None else None,
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

    job = run(url, token, action)
    if json_out:
        print_json(job)
    elif not wait:
        pill = state_pill(job.get("state"))
        out.print(Text.assemble(f"enqueued {job['id']} on {job.get('queue')}: ", pill))
    else:
        print_outcome(job)
    if wait and job.get("state") != "done":
        raise typer.Exit(int(ExitCode.FAILED))


async def _wait_for(client: Client, job: JSONDict, limit: float | None) -> JSONDict:
    """Follow the job until it is terminal, with a live status line (state, attempt, progress) on
    stderr: woken by its events when the client can subscribe, else by polling."""
    started = time.monotonic()
    terminal = {s.value for s in TERMINAL_STATES}
    nobody = await no_worker_takes(client, str(job.get("queue") or "default"))
    if nobody:
        err.print(Text("warning: ", style="bold yellow") + Text(nobody))
    with err.status(f"{job['id']}: {job.get('state')}") as status:
        while str(job.get("state")) not in terminal:
            if limit is not None and time.monotonic() - started > limit:
                why = f": {nobody}" if nobody and job.get("state") == "enqueued" else ""
                text = f"gave up after {limit:g}s: job {job['id']} is still {job.get('state')}{why}"
                raise OpsError(text, ExitCode.FAILED)
            await client.wait_change(job)
            events = job.get("events")
            job = await client.get(str(job["id"]), str(job.get("queue") or "") or None)
            job.setdefault("events", events)
            elapsed = time.monotonic() - started
            status.update(
                f"{job['id']}: {job.get('state')}  attempt {job.get('attempts')}/{job.get('max_attempts')}  "
                f"{progress_text(job)}{elapsed:.1f}s"
            )
    return job


LIVE_HEARTBEAT_AGE = 60.0  # a worker whose heartbeat is older than this is not counted as live


async def no_worker_takes(client: Client, queue: str) -> str | None:
    """A sentence saying no live worker takes `queue` (so a job there just waits), or None."""
    try:
        workers = await client.workers()
    except OpsError:
        return None  # cannot tell: say nothing rather than something wrong
    live = [w for w in workers if float(w.get("heartbeat_age") or 0.0) <= LIVE_HEARTBEAT_AGE]
    if any(queue in (w.get("queues") or []) for w in live):
        return None
    taken = sorted({str(q) for w in live for q in w.get("queues") or []})
    seen = f"live workers take: {', '.join(taken)}" if taken else "no worker is live"
    return f"no live worker takes queue {queue!r} ({seen}); start one with BAGBOT_QUEUES={queue}"


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
        raise fail(f"unknown state {state!r}", ExitCode.USAGE)
    check_queue(queue)

    async def action(client: Client) -> Page:
        page = await client.list_jobs(queue, state, name, limit, cursor)
        if queue and not page.jobs and cursor is None:  # an empty table for a typo says nothing
            known = sorted(await client.counts())
            if queue not in known:
                listed = ", ".join(known) if known else "none yet"
                raise OpsError(f"no queue {queue!r}: no job was ever enqueued on it (queues: {listed})",
                               ExitCode.NOT_FOUND)
        return page

    page = run(url, token, action)
    if json_out:
        print_json({"jobs": page.jobs, "cursor": page.cursor})
        return
    out.print(jobs_table(page.jobs))
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
    job = run(url, token, lambda c: c.get(job_id, queue))
    if json_out:
        print_json(job)
        return
    out.print(job_detail(job))


IdsArg = Annotated[list[str] | None, typer.Argument(metavar="ID", show_default=False)]


@jobs_app.command("retry")
def jobs_retry(
    job_ids: IdsArg = None,
    queue: QueueOpt = None,
    state: StateOpt = None,
    name: NameOpt = None,
    limit: LimitOpt = None,
    everything: AllOpt = False,
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Put failed or cancelled jobs back in their queue (attempts reset to 0): one ID, several, or
    every job a filter matches (--state failed|cancelled, --queue, --name; --all for no filter)."""
    if _single(job_ids, state, name, limit, everything):
        job_id = (job_ids or [""])[0]
        _print_transition(run(url, token, lambda c: c.retry(job_id, queue)), json_out)
        return
    bulk_command("retry", job_ids or [], queue, state, name, limit, everything, True, json_out, url, token)


@jobs_app.command("cancel", short_help="Cancel jobs; a running one is asked to stop.")
def jobs_cancel(
    job_ids: IdsArg = None,
    queue: QueueOpt = None,
    state: StateOpt = None,
    name: NameOpt = None,
    limit: LimitOpt = None,
    everything: AllOpt = False,
    yes: YesOpt = False,
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Cancel jobs: one ID, several, or every job a filter matches (asks first unless --yes).

    Enqueued, scheduled or retry_scheduled: cancelled at once (a filter's default).

    Running: its worker stops it within a heartbeat, and it ends cancelled. A filter takes running
    jobs only with --state running."""
    if _single(job_ids, state, name, limit, everything):
        job_id = (job_ids or [""])[0]
        _print_transition(run(url, token, lambda c: c.cancel(job_id, queue)), json_out)
        return
    bulk_command("cancel", job_ids or [], queue, state, name, limit, everything, yes, json_out, url, token)


def _single(ids: list[str] | None, state: str | None, name: str | None, limit: int | None,
            everything: bool) -> bool:
    """One ID and no filter: the single-job command, which prints the job."""
    return ids is not None and len(ids) == 1 and state is None and name is None and limit is None \
        and not everything


jobs_app.command("purge")(jobs_purge)


def _print_transition(job: JSONDict, json_out: bool) -> None:
    """The job's state after retry/cancel, and whether a running job was only asked to stop."""
    if json_out:
        print_json(job)
        return
    asked = ""
    if job.get("cancel_requested"):
        asked = " (cancel requested: its worker stops it within a heartbeat)"
    out.print(Text.assemble(f"{job['id']}: ", state_pill(job.get("state")), asked))
