"""`bagbot bench --compare-bullmq`: bagbot and BullMQ alternately on one private server, medians and ratios.

An absolute rate moves with the machine's load, so each pair runs `bagbot bench` and then
BullMQ's shared scripts back to back on the same private redis-server; a target is judged on
the median over the pairs of the ratio within each pair (or, for a target with no BullMQ
figure, on the median of our value). The targets are those of the performance issue.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from backend.ops.bench_bullmq import Bullmq
from backend.ops.bench_run import BenchOptions, run_bench
from backend.ops.bench_server import PrivateRedis


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the comparison: our figure, BullMQ's (key in its JSON, or None) and the target."""

    label: str
    ours: str
    theirs: str | None
    fmt: str
    kind: str = ""  # "at least" / "at most" BullMQ (on the ratio), "max" (on our value), "" (no target)
    limit: float = 0.0

    def target(self) -> str:
        if self.kind == "at least":
            return "≥ BullMQ" if self.limit == 1 else f"≥ {self.limit:g}× BullMQ"
        if self.kind == "at most":
            return "≤ BullMQ" if self.limit == 1 else f"≤ {self.limit:g}× BullMQ"
        if self.kind == "max":
            return f"≤ {self.fmt.format(self.limit)}"
        return ""

    def met(self, ours: float, ratio: float | None) -> bool | None:
        if self.kind == "at least" and ratio is not None:
            return ratio >= self.limit
        if self.kind == "at most" and ratio is not None:
            return ratio <= self.limit
        if self.kind == "max":
            return ours <= self.limit
        return None


ROWS: tuple[Row, ...] = (
    Row("drain, 1 worker (jobs/s)", "drain_jobs_per_s", "drain_jobs_per_s", "{:,.0f}", "at least", 1),
    Row("enqueue 1 at a time (jobs/s)", "enqueue_single_jobs_per_s",
        "enqueue_single_jobs_per_s", "{:,.0f}", "at least", 1),
    Row("enqueue batched (jobs/s)", "enqueue_batch_jobs_per_s", "enqueue_batch_jobs_per_s",
        "{:,.0f}", "at least", 1),
    Row("Redis CPU/job (µs)", "redis_cpu_us_per_job", "redis_cpu_us_per_job", "{:.1f}"),
    Row("Redis CPU / floor", "redis_cpu_vs_floor", "redis_cpu_vs_floor", "{:.2f}×", "max", 2.0),
    Row("floor CPU/job (µs)", "floor_redis_cpu_us_per_job", None, "{:.1f}"),
    Row("memory/queued job (B)", "redis_bytes_per_queued_job", "queued_bytes_per_job",
        "{:,.0f}", "at most", 1),
    Row("memory/finished job (B)", "redis_bytes_per_finished_job", "finished_bytes_per_job",
        "{:,.0f}", "at most", 1),
    Row("start latency p50 (ms)", "latency_p50_ms", None, "{:.2f}", "max", 1.0),
    Row("start latency p99 (ms)", "latency_p99_ms", None, "{:.2f}", "max", 2.0),
)


@dataclass(slots=True)
class Comparison:
    """Every pair's raw figures and, per row, the medians, the median ratio and whether the target is met."""

    jobs: int
    redis_version: str
    bullmq_version: str
    pairs: list[dict[str, dict[str, Any]]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summarise(self) -> None:
        self.rows = []
        for row in ROWS:
            ours = [float(pair["bagbot"][row.ours]) for pair in self.pairs]
            theirs = [float(pair["bullmq"][row.theirs]) for pair in self.pairs] if row.theirs else []
            ratios = [o / t for o, t in zip(ours, theirs, strict=True) if t] if theirs else []
            ours_median = statistics.median(ours)
            ratio = statistics.median(ratios) if ratios else None
            self.rows.append({
                "measure": row.label, "bagbot": ours_median,
                "bullmq": statistics.median(theirs) if theirs else None, "ratio": ratio, "ratios": ratios,
                "values": ours,
                "target": row.target(), "met": row.met(ours_median, ratio),
            })


def run_compare(opts: BenchOptions, bullmq: Bullmq, pairs: int, say: Any = None) -> Comparison:
    """`pairs` times: `bagbot bench` (as `opts` says), then BullMQ's bench.mjs and mem.mjs, on one server."""
    with PrivateRedis() as server:
        ours_opts = replace(opts, redis_url=server.url)
        comparison = Comparison(jobs=opts.jobs, redis_version=server.version(), bullmq_version=bullmq.version)
        for index in range(pairs):
            if say:
                say(f"pair {index + 1}/{pairs}: bagbot bench -n {opts.jobs}")
            ours = run_bench(ours_opts, quiet=say is None).to_json()
            if say:
                say(f"pair {index + 1}/{pairs}: BullMQ {bullmq.version} bench.mjs + mem.mjs -n {opts.jobs}")
            theirs = bullmq.run(server.port, opts.jobs)
            floor = float(ours["floor_redis_cpu_us_per_job"])
            theirs["redis_cpu_vs_floor"] = float(theirs["redis_cpu_us_per_job"]) / floor if floor else 0.0
            comparison.pairs.append({"bagbot": ours, "bullmq": theirs})
    comparison.summarise()
    return comparison


def print_comparison(comparison: Comparison) -> None:
    from rich.console import Console
    from rich.table import Table

    n = len(comparison.pairs)
    table = Table(title=f"bagbot vs BullMQ {comparison.bullmq_version}: {comparison.jobs:,} no-op jobs, "
                        f"one worker process, concurrency 100, private redis-server "
                        f"{comparison.redis_version}, median of {n} pair(s)")
    for name, justify in (("measure", "left"), ("bagbot", "right"), ("BullMQ", "right"),
                          ("ratio", "right"), ("each pair", "right"), ("target", "left"), ("met", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row, line in zip(ROWS, comparison.rows, strict=True):
        theirs = "" if line["bullmq"] is None else row.fmt.format(line["bullmq"])
        ratio = "" if line["ratio"] is None else f"{line['ratio']:.3g}×"  # 0.998 is not "1.00"
        met = {True: "met", False: "NOT met", None: ""}[line["met"]]
        if row.kind == "max" or not line["ratios"]:  # each pair's figure the target is judged on
            each = " ".join(row.fmt.format(value) for value in line["values"])
        else:
            each = " ".join(f"{r:.3g}×" for r in line["ratios"])
        table.add_row(row.label, row.fmt.format(line["bagbot"]), theirs, ratio, each, line["target"], met)
    console = Console(width=max(Console().width, 100))
    console.print(table)
    console.print("[dim]ratio = bagbot / BullMQ, the median of each pair's ratio (or, where the target is on "
                  "our figure, each pair's figure); enqueue 1 at a time: 100 "
                  "in flight; batched: BullMQ's addBulk; start latency: an idle worker. Redis CPU: bagbot's "
                  "counts the batched enqueue + drain, BullMQ's (bench.mjs) the one-at-a-time enqueue + "
                  "drain; the floor is measured in bagbot's run. BullMQ memory: mem.mjs (addBulk, then "
                  "drain).[/dim]")
