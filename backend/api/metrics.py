"""GET /api/metrics: Prometheus text exposition built from the store's metrics snapshot.

Redis is the source of truth: every worker process updates the counters and
histogram buckets inside the same Lua step as the transition they count, so
the backend shows what every worker did by reading one snapshot per scrape
(a few round trips, however many jobs there are). Nothing is counted in this
process's memory, so a backend restart or a second backend instance changes
nothing.

Each scrape builds a private CollectorRegistry holding one collector over the
snapshot it just read: the default global registry is never touched, and two
concurrent scrapes cannot see each other's data.

Labels are bounded: queue, handler name, outcome, state and worker id, never a job id.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from backend.api.deps import StoreDep
from backend.api.schemas import ErrorOut
from backend.workers.job_store import JobStore
from backend.workers.models import MetricsSnapshot, QueueMetrics, RunOutcome
from backend.workers.rules import DURATION_BUCKETS

router = APIRouter(prefix="/api", tags=["metrics"])

# The five names the staging guide's checker looks for, in its order.
GUIDE_METRICS = (
    "bagbot_job_enqueue_total",
    "bagbot_job_run_total",
    "bagbot_job_run_duration_seconds",
    "bagbot_retry_scheduled_total",
    "bagbot_heartbeat_age_seconds",
)


class SnapshotCollector(Collector):
    """Turns one MetricsSnapshot into metric families.

    Every family is always yielded, so its HELP/TYPE lines are in every scrape.
    Once a handler name is known in a queue (a job of it was enqueued), every
    counter and the histogram get a series for it, at 0 until something
    happens: Prometheus's increase() then sees the first run or retry as a
    step from 0 instead of missing it, and the guide's checker finds all five
    metrics as soon as one job was enqueued and one worker heartbeats.
    """

    def __init__(self, snapshot: MetricsSnapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        yield from self._counters()
        yield self._durations()
        yield from self._gauges()

    def _names(self) -> Iterator[tuple[str, str, QueueMetrics]]:
        """(queue, handler name, its queue's counters) for every pair that has any counter."""
        for queue, qm in sorted(self.snapshot.queues.items()):
            names = {*qm.enqueued, *(name for name, _ in qm.runs), *qm.retries, *qm.duration_buckets}
            for name in sorted(names):
                yield queue, name, qm

    def _counters(self) -> Iterator[Metric]:
        enqueued = CounterMetricFamily(
            "bagbot_job_enqueue_total", "Jobs enqueued, by queue and handler.", labels=["queue", "name"]
        )
        runs = CounterMetricFamily(
            "bagbot_job_run_total",
            "Handler runs by outcome: done, retry (raised, will run again), failed (raised, no attempts"
            " left), expired (lease ran out: the worker stopped heartbeating).",
            labels=["queue", "name", "outcome"],
        )
        retries = CounterMetricFamily(
            "bagbot_retry_scheduled_total", "Retries scheduled after a failed or expired run.",
            labels=["queue", "name"],
        )
        for queue, name, qm in self._names():
            enqueued.add_metric([queue, name], qm.enqueued.get(name, 0))
            outcomes = [o.value for o in RunOutcome]
            outcomes += sorted({o for n, o in qm.runs if n == name} - set(outcomes))  # future outcomes too
            for outcome in outcomes:
                runs.add_metric([queue, name, outcome], qm.runs.get((name, outcome), 0))
            retries.add_metric([queue, name], qm.retries.get(name, 0))
        yield from (enqueued, runs, retries)

    def _durations(self) -> Metric:
        family = HistogramMetricFamily(
            "bagbot_job_run_duration_seconds", "How long handler runs took, by queue and handler.",
            labels=["queue", "name"],
        )
        for queue, name, qm in self._names():
            counts = qm.duration_buckets.get(name, ())
            family.add_metric([queue, name], cumulative_buckets(counts), qm.duration_sum.get(name, 0.0))
        return family

    def _gauges(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("bagbot_jobs", "Jobs in the store now, by queue and state.",
                                 labels=["queue", "state"])
        for queue, by_state in sorted(self.snapshot.counts.items()):
            for state, count in sorted(by_state.items()):
                jobs.add_metric([queue, state], count)
        ages = GaugeMetricFamily("bagbot_heartbeat_age_seconds",
                                 "Seconds since each registered worker's last heartbeat.", labels=["worker"])
        for worker, age in sorted(self.snapshot.heartbeat_ages.items()):
            ages.add_metric([worker], age)
        workers = GaugeMetricFamily("bagbot_workers", "Registered workers.",
                                    value=len(self.snapshot.heartbeat_ages))
        unreadable = GaugeMetricFamily(
            "bagbot_unreadable_values",
            "Stored metric values this scrape skipped because they could not be read (a corrupt record).",
            value=self.snapshot.unreadable)
        paused = GaugeMetricFamily("bagbot_queue_paused",
                                   "1 while the queue is paused (workers claim nothing from it), else 0.",
                                   labels=["queue"])
        for queue in sorted(set(self.snapshot.counts) | self.snapshot.paused):
            paused.add_metric([queue], 1 if queue in self.snapshot.paused else 0)
        yield from (jobs, ages, workers, unreadable, paused)


def cumulative_buckets(counts: Sequence[int]) -> list[tuple[str, float]]:
    """Per-bucket counts (one per DURATION_BUCKETS bound, then +Inf) → Prometheus's cumulative `le` buckets.

    A snapshot with fewer or more slots than the bounds (buckets changed between
    versions) still gives a valid histogram: missing slots count 0, extra ones go to +Inf.
    """
    running = 0
    buckets: list[tuple[str, float]] = []
    for i, bound in enumerate(DURATION_BUCKETS):
        running += counts[i] if i < len(counts) else 0
        buckets.append((repr(float(bound)), running))  # le="0.005", "1.0": as prometheus_client writes them
    running += sum(counts[len(DURATION_BUCKETS):])
    buckets.append(("+Inf", running))
    return buckets


class ResetCollector(Collector):
    """`bagbot_store_resets_total`: how often this backend process saw Redis lose its data.

    The one counter kept in process memory, on purpose: a reset wipes whatever Redis counted.
    Prometheus sums it over backend instances; any increase means jobs stored before were lost.
    """

    def __init__(self, resets: int) -> None:
        self.resets = resets

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "bagbot_store_resets",
            "Times this backend saw Redis lose its data (restart without persistence, FLUSHALL, failover"
            " to an empty replica): jobs stored before were lost.",
            value=self.resets,
        )


def render(snapshot: MetricsSnapshot, store_resets: int | None = None) -> bytes:
    """The text exposition of `snapshot`, through a registry private to this call."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    if store_resets is not None:
        registry.register(ResetCollector(store_resets))
    return generate_latest(registry)


async def scrape(store: JobStore) -> bytes:
    return render(await store.metrics())


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format 0.0.4"},
               503: {"model": ErrorOut}},
)
async def metrics(store: StoreDep, request: Request) -> Response:
    """Prometheus text exposition of the store's counters, histograms and gauges."""
    watcher = getattr(request.app.state, "reset_watcher", None)
    body = render(await store.metrics(), watcher.resets if watcher is not None else None)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


# HEAD for uptime monitors: the GET's status and headers, no body (the server drops it)
router.add_api_route("/metrics", metrics, methods=["HEAD"], response_class=Response, include_in_schema=False)
