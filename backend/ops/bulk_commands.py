"""`bagbot jobs retry|cancel` over a filter, `bagbot jobs purge`, and `bagbot queues pause|resume`.

The API answers a bounded slice per call (backend/workers/bulk.py); these commands call again
while more jobs match and the last call moved some, and print the totals. `job_commands.py`
registers the jobs commands, `cli.py` the queues group.
"""

from __future__ import annotations

from typing import Annotated

import typer

from backend.ops.cli_support import JsonOpt, TokenOpt, UrlOpt, err, fail, out, print_json, run
from backend.ops.client import Client, ExitCode, JSONDict
from backend.workers.bulk import MAX_BULK, MAX_PURGE
from backend.workers.models import TERMINAL_STATES, JobState

PAST = {"retry": "retried", "cancel": "cancelled"}

StateOpt = Annotated[str | None, typer.Option("--state", help="Only jobs in this state.")]
NameOpt = Annotated[str | None, typer.Option("--name", help="Only jobs of this handler.")]
LimitOpt = Annotated[
    int | None, typer.Option("--limit", min=1, help="At most this many jobs in all (default: every match).")
]
AllOpt = Annotated[bool, typer.Option("--all", help="No filter: every job the action applies to.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")]


def check_state(state: str | None) -> None:
    if state is not None and state not in {s.value for s in JobState}:
        raise fail(f"unknown state {state!r}: one of {', '.join(s.value for s in JobState)}", ExitCode.USAGE)


def bulk_command(action: str, ids: list[str], queue: str | None, state: str | None, name: str | None,
                 limit: int | None, everything: bool, yes: bool, json_out: bool, url: str | None,
                 token: str | None) -> None:
    """Run `action` over the filter until nothing more matches (or --limit is reached)."""
    check_state(state)
    if not (ids or queue or state or name or everything):
        raise fail(f"say which jobs to {action}: IDs, --state, --queue, --name, or --all", ExitCode.USAGE)
    if action == "cancel" and not yes and not typer.confirm(
        f"Cancel every job matching {_described(ids, queue, state, name)}?", err=True
    ):
        err.print("nothing cancelled")
        raise typer.Exit(int(ExitCode.FAILED))

    async def loop(client: Client) -> JSONDict:
        total = {"matched": 0, "moved": 0, "more": False}
        while True:
            left = MAX_BULK if limit is None else min(MAX_BULK, limit - total["matched"])
            body = {"ids": ids or None, "queue": queue, "state": state, "name": name, "limit": left}
            reply = await client.bulk(action, body)
            total["matched"] += int(reply.get("matched") or 0)
            total["moved"] += int(reply.get("moved") or 0)
            total["more"] = bool(reply.get("more"))
            done = limit is not None and total["matched"] >= limit
            if ids or not total["more"] or not reply.get("moved") or done:
                return total

    total = run(url, token, loop)
    if json_out:
        print_json(total)
        return
    stuck = int(total["matched"]) - int(total["moved"])
    line = f"{PAST[action]} {total['moved']} job(s)"
    if stuck:
        line += f"; {stuck} matched but left as they were (their state no longer allowed it)"
    out.print(line)
    if total["more"]:
        out.print("more jobs match: run it again")


def _described(ids: list[str], queue: str | None, state: str | None, name: str | None) -> str:
    parts = [f"{len(ids)} id(s)"] if ids else []
    given = (("queue", queue), ("state", state), ("name", name))
    parts += [f"{key}={value}" for key, value in given if value]
    return ", ".join(parts) or "the action's default states in every queue"


async def purge_all(client: Client, older_than: float, queues: list[str] | None, state: str | None) -> int:
    """Purge in bounded calls until one deletes fewer than the bound."""
    purged = 0
    while True:
        count = await client.purge(older_than, queues, state)
        purged += count
        if count < MAX_PURGE:
            return purged


def jobs_purge(
    queue: Annotated[
        list[str] | None, typer.Option("--queue", "-q", help="Only these queues (repeatable).")
    ] = None,
    state: Annotated[str | None, typer.Option("--state", help="done, failed or cancelled (default: all)."
                                              )] = None,
    older_than: Annotated[float, typer.Option("--older-than", min=0, help="Seconds since the job finished."
                                              )] = 0.0,
    yes: YesOpt = False,
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Delete finished jobs (done, failed, cancelled), over HTTP with --url too."""
    if state is not None and state not in {s.value for s in TERMINAL_STATES}:
        raise fail(f"--state {state!r}: purge takes done, failed or cancelled", ExitCode.USAGE)
    scope = ", ".join(queue) if queue else "every queue"
    if not yes and not typer.confirm(
        f"Delete {state or 'finished'} jobs finished over {older_than:g}s ago in {scope}?", err=True
    ):
        err.print("nothing deleted")
        raise typer.Exit(int(ExitCode.FAILED))

    count = run(url, token, lambda c: purge_all(c, older_than, list(queue) if queue else None, state))
    print_json({"purged": count}) if json_out else out.print(f"purged {count} job(s)")


# -- queues ------------------------------------------------------------------------------------------

queues_app = typer.Typer(help="List queues (with no command), pause or resume one.")
QueueArg = Annotated[str, typer.Argument(metavar="QUEUE")]


def _set_paused(ctx: typer.Context, queue: str, paused: bool, json_out: bool, url: str | None,
                token: str | None) -> None:
    given = ctx.obj if isinstance(ctx.obj, dict) else {}  # `bagbot queues --url X pause Q` works too
    url, token = url or given.get("url"), token or given.get("token")
    reply = run(url, token, lambda c: c.set_paused(queue, paused))
    if json_out:
        print_json(reply)
    elif paused:
        out.print(f"queue {queue} paused: no worker claims from it until `bagbot queues resume {queue}`")
    else:
        out.print(f"queue {queue} resumed")


@queues_app.command("pause")
def queues_pause(ctx: typer.Context, queue: QueueArg, json_out: JsonOpt = False, url: UrlOpt = None,
                 token: TokenOpt = None) -> None:
    """Pause a queue: workers stop claiming from it at once; running jobs finish, enqueues wait."""
    _set_paused(ctx, queue, True, json_out, url, token)


@queues_app.command("resume")
def queues_resume(ctx: typer.Context, queue: QueueArg, json_out: JsonOpt = False, url: UrlOpt = None,
                  token: TokenOpt = None) -> None:
    """Resume a paused queue: a waiting worker claims from it at once."""
    _set_paused(ctx, queue, False, json_out, url, token)
