"""How `bagbot` shows jobs, queues, workers and checks: the tables, ages, state pills and progress text.

Kept apart from the commands so that every command shows a job the same way; `--json`
output does not come through here (see `cli_support.print_json`).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text

from backend.ops.cli_support import out
from backend.ops.client import JSONDict
from backend.workers.models import ALL_STATES

if TYPE_CHECKING:
    from backend.ops.redis_check import CheckReport
    from backend.ops.smoke import SmokeResult

STATE_STYLE = {
    "done": "green",
    "failed": "red",
    "cancelled": "dim",
    "running": "cyan",
    "enqueued": "yellow",
    "scheduled": "blue",
    "retry_scheduled": "magenta",
}


def age(epoch: Any) -> str:
    """`4.2s ago`, `12m ago`, `3.0h ago`; `-` for a time that is not set."""
    if not isinstance(epoch, int | float) or not epoch:
        return "-"
    seconds = max(0.0, time.time() - float(epoch))
    if seconds < 120:
        return f"{seconds:.1f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def state_pill(state: Any) -> Text:
    """The state's name in its colour, the same in every table."""
    return Text(str(state), style=STATE_STYLE.get(str(state), ""))


def error_text(job: JSONDict) -> str:
    """`Type: message` of the job's last error, or "" when it has none."""
    error = job.get("last_error")
    if not isinstance(error, dict):
        return ""
    return f"{error.get('type', '')}: {error.get('message', '')}"


def progress_text(job: JSONDict) -> str:
    """`45% step 3 of 7  ` (values in 0..1 read as a fraction), or "" before any progress."""
    value = job.get("progress")
    if value is None:
        return ""
    shown = f"{float(value) * 100:.0f}%" if 0 <= float(value) <= 1 else f"{float(value):g}"
    message = str(job.get("progress_message") or "")[:60]
    return f"{shown} {message}".rstrip() + "  "


def print_outcome(job: JSONDict) -> None:
    """How a waited-for job ended: its state and attempts, then its result or its error."""
    state = str(job.get("state"))
    out.print(Text.assemble(f"{job['id']} ", state_pill(state), f" after {job.get('attempts')} attempt(s)"))
    if state == "done":
        out.print(json.dumps(job.get("result"), ensure_ascii=False), markup=False)
    elif job.get("last_error"):
        out.print(Text(error_text(job), style="red"))


def jobs_table(jobs: list[JSONDict]) -> Table:
    """One row a job for `jobs list`: the error cut to 60 characters, times as ages."""
    table = Table(box=None, header_style="bold")
    for column in ("id", "queue", "name", "state", "attempts", "created", "last error"):
        table.add_column(column, overflow="fold")
    for job in jobs:
        table.add_row(
            str(job.get("id")),
            str(job.get("queue")),
            str(job.get("name")),
            state_pill(job.get("state")),
            f"{job.get('attempts')}/{job.get('max_attempts')}",
            age(job.get("created_at")),
            error_text(job)[:60],
        )
    return table


def job_detail(job: JSONDict) -> Table:
    """Every field of one job for `jobs show`, times with their age, the traceback in full."""
    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in job.items():
        if key == "state":
            table.add_row(key, state_pill(value))
        elif key.endswith("_at") or key == "lease_until":
            table.add_row(key, "-" if value is None else f"{value}  ({age(value)})")
        elif key == "last_error" and isinstance(value, dict):
            table.add_row(key, Text(f"{value.get('type')}: {value.get('message')}", style="red"))
            if value.get("traceback"):
                table.add_row("traceback", Text(str(value["traceback"]), style="dim"))
        else:
            table.add_row(key, Text(json.dumps(value, ensure_ascii=False, default=str)))
    return table


def queues_table(counts: dict[str, dict[str, int]], paused: set[str] | None = None) -> Table:
    """A row a queue, a column a state (in the states' order), counts coloured like the state; a
    paused queue says so after its name."""
    table = Table(box=None, header_style="bold")
    table.add_column("queue")
    for state in ALL_STATES:
        table.add_column(state.value, justify="right", style=STATE_STYLE.get(state.value, ""))
    for queue_name, by_state in sorted(counts.items()):
        label = Text(queue_name)
        if paused and queue_name in paused:
            label.append(" (paused)", style="bold yellow")
        table.add_row(label, *(str(by_state.get(s.value, 0)) for s in ALL_STATES))
    return table


def schedules_table(listed: list[JSONDict]) -> Table:
    """The declared periodic jobs, the next fire time in UTC (`never` when none is left)."""
    table = Table(box=None, header_style="bold")
    for column in ("name", "handler", "queue", "schedule", "time zone", "next fire (UTC)"):
        table.add_column(column, overflow="fold")
    for entry in listed:
        nxt = entry.get("next_fire")
        when = "never" if nxt is None else f"{datetime.fromtimestamp(float(nxt), UTC):%Y-%m-%d %H:%M:%S}"
        table.add_row(str(entry.get("name")), str(entry.get("handler")), str(entry.get("queue")),
                      str(entry.get("expression")), str(entry.get("timezone")), when)
    return table


def workers_table(listed: list[JSONDict], lease: float) -> Table:
    """Registered workers; a heartbeat older than `lease` is red (its jobs are about to be recovered)."""
    table = Table(box=None, header_style="bold")
    for column in ("id", "host", "pid", "queues", "running", "heartbeat age", "started", "handlers"):
        table.add_column(column, overflow="fold")
    for info in listed:
        heartbeat_age = float(info.get("heartbeat_age") or 0.0)
        table.add_row(
            str(info.get("id")),
            str(info.get("host")),
            str(info.get("pid")),
            ",".join(info.get("queues") or []),
            f"{info.get('running')}/{info.get('concurrency')}",
            Text(f"{heartbeat_age:.1f}s", style="red" if heartbeat_age > lease else "green"),
            age(info.get("started_at")),
            ",".join(info.get("handlers") or []),
        )
    return table


def print_check(report: CheckReport) -> None:
    """`bagbot check` for people: what the server is, its policy and memory, then the verdict."""
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


def print_checklist(result: SmokeResult) -> None:
    """`bagbot smoke` for people: the guide's validation checklist, a mark and a detail per item."""
    out.print(Text("Validation Checklist", style="bold"))
    for item in result.items:
        mark = Text("✓ ", style="green") if item.ok else Text("✗ ", style="red")
        out.print(Text.assemble(mark, item.label, Text(f"  — {item.detail}", style="dim")))
    out.print(f"smoke run {result.run_id}: {'all checks passed' if result.ok else 'FAILED'}")
