"""`bagbot bench`: the command and its table; the measuring is in `bench_run.py`.

The figures are the ones the README quotes (see benchmarks/README.md for the workload).
"""

from __future__ import annotations

import json
import os
from typing import Annotated

import typer

from backend.ops.bench_run import BenchOptions, BenchResult, run_bench

ROWS: tuple[tuple[str, str, str], ...] = (
    ("enqueue_single_jobs_per_s", "enqueue, one at a time (jobs/s)", "{:,.0f}"),
    ("enqueue_batch_jobs_per_s", "enqueue, batched (jobs/s)", "{:,.0f}"),
    ("drain_jobs_per_s", "drain (jobs/s)", "{:,.0f}"),
    ("latency_p50_ms", "start latency p50 (ms)", "{:.2f}"),
    ("latency_p99_ms", "start latency p99 (ms)", "{:.2f}"),
    ("latency_max_ms", "start latency max (ms)", "{:.2f}"),
    ("commands_per_job_single", "Redis commands per job, no batching", "{:.2f}"),
    ("commands_per_job_batched", "Redis commands per job, batched", "{:.2f}"),
    ("script_commands_per_job", "  incl. commands inside scripts", "{:.1f}"),
    ("redis_cpu_us_per_job", "Redis CPU per job (µs)", "{:.1f}"),
    ("redis_bytes_per_queued_job", "Redis memory per queued job (bytes)", "{:,.0f}"),
    ("redis_bytes_per_finished_job", "Redis memory per finished job (bytes)", "{:,.0f}"),
    ("worker_peak_rss_mib", "worker peak RSS (MiB)", "{:.1f}"),
    ("due_lateness_p50_ms", "delayed job, start after due time p50 (ms)", "{:.1f}"),
    ("due_lateness_p99_ms", "delayed job, start after due time p99 (ms)", "{:.1f}"),
    ("retry_lateness_p50_ms", "retry, start after due time p50 (ms)", "{:.1f}"),
    ("retry_lateness_p99_ms", "retry, start after due time p99 (ms)", "{:.1f}"),
)


def _print_table(result: BenchResult) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"bagbot bench: {result.jobs:,} no-op jobs, {result.workers} worker process(es), "
                        f"concurrency {result.concurrency}, {result.store} store")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, label, fmt in ROWS:
        value = getattr(result, key)
        if result.store == "memory" and key not in ("enqueue_single_jobs_per_s", "enqueue_batch_jobs_per_s",
                                                    "drain_jobs_per_s"):
            continue
        table.add_row(label, fmt.format(value))
    console = Console()
    console.print(table)
    for note in result.notes:
        console.print(f"[dim]{note}[/dim]")


def register(app: typer.Typer) -> None:
    """Add `bagbot bench` to the CLI."""

    @app.command()
    def bench(
        jobs: Annotated[int, typer.Option("--jobs", "-n", min=1, help="Jobs per phase.")] = 20_000,
        workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="Worker processes.")] = 1,
        concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, help="Per worker.")] = 100,
        store: Annotated[str, typer.Option("--store", help="redis or memory.")] = "redis",
        redis_url: Annotated[str | None, typer.Option("--redis-url", help="Default: $REDIS_URL.")] = None,
        latency_jobs: Annotated[int, typer.Option("--latency-jobs", min=1)] = 1_000,
        latency_rate: Annotated[float, typer.Option("--latency-rate", min=1, help="Jobs/s.")] = 200.0,
        queues: Annotated[int, typer.Option("--queues", min=1, help="Spread jobs over N queues.")] = 1,
        json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
        soak: Annotated[float | None, typer.Option(
            "--soak", min=1, help="Instead: drain for this many seconds, sampling Redis memory.")] = None,
        retention: Annotated[float, typer.Option("--retention", min=0.001, help="--soak: the workers'"
                             " BAGBOT_RETENTION_SECONDS.")] = 5.0,
    ) -> None:
        """Measure enqueue and drain rates, start latency, Redis commands, CPU and memory per job."""
        if store not in ("redis", "memory"):
            raise typer.BadParameter("--store must be redis or memory")
        url = redis_url or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
        if soak is not None:
            from backend.ops.bench_soak import soak_command

            soak_command(soak, retention, workers, concurrency, url, json_out)
            return
        opts = BenchOptions(jobs=jobs, workers=workers, concurrency=concurrency, store=store, redis_url=url,
                            latency_jobs=latency_jobs, latency_rate=latency_rate, queues=queues)
        result = run_bench(opts, quiet=json_out)
        if json_out:
            typer.echo(json.dumps(result.to_json(), indent=2))
        else:
            _print_table(result)
