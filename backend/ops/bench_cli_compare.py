"""The CLI side of `bagbot bench --compare-bullmq`: check what it needs, run it, print the table or JSON."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from backend.ops.bench_bullmq import BullmqUnavailable, find_bullmq
from backend.ops.bench_compare import print_comparison, run_compare
from backend.ops.bench_run import BenchOptions


def compare_command(opts: BenchOptions, pairs: int, scripts: Path | None, node_modules: Path | None,
                    json_out: bool) -> None:
    """Exit 2 with the reason when node, bullmq or the scripts are missing (nothing is measured then),
    1 when a BullMQ script fails."""
    if opts.store != "redis":
        raise typer.BadParameter("--compare-bullmq measures the redis store")
    if opts.workers != 1 or opts.queues != 1:
        raise typer.BadParameter("--compare-bullmq compares one worker process on one queue, as BullMQ's "
                                 "scripts run")
    try:
        bullmq = find_bullmq(scripts, node_modules)
    except BullmqUnavailable as exc:
        typer.echo(f"bagbot bench --compare-bullmq: {exc}", err=True)
        raise typer.Exit(2) from None

    def say(line: str) -> None:
        typer.echo(line, err=True)

    try:
        comparison = run_compare(opts, bullmq, pairs, say=None if json_out else say)
    except RuntimeError as exc:  # a BullMQ script failed, or no redis-server to run them on
        typer.echo(f"bagbot bench --compare-bullmq: {exc}", err=True)
        raise typer.Exit(1) from None
    if json_out:
        typer.echo(json.dumps(comparison.to_json(), indent=2))
    else:
        print_comparison(comparison)
