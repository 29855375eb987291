"""What a worker declares to the store (handler limits, schedules) and the loop that fires its
periodic jobs. The time maths (cron lines, fixed intervals) is in `schedules.py`."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from backend.config import Settings
from backend.workers.handlers import HandlerRegistry
from backend.workers.job_store import JobStore
from backend.workers.logfmt import fmt
from backend.workers.outages import OUTAGE_ERRORS
from backend.workers.schedules import Schedule, due_fire, fire_spec, info_of
from backend.workers.worker_state import WorkerState

log = logging.getLogger("bagbot.worker")


class Scheduler:
    """Publishes the registry's limits and schedules, and enqueues each schedule's fire times."""

    def __init__(
        self,
        store: JobStore,
        settings: Settings,
        state: WorkerState,
        registry: HandlerRegistry,
        queues: Sequence[str],
    ) -> None:
        self.store = store
        self.settings = settings
        self.state = state
        self.registry = registry
        self.queues = list(queues)
        self.declared = False  # handler limits and schedules published to the store

    def schedules(self) -> list[tuple[str, Schedule]]:
        return self.registry.schedules()

    async def declare(self) -> None:
        """Publish handler concurrency and rate limits (read by the claim script) and schedules (listed by
        the API and CLI). Retried by housekeeping while the store is unreachable."""
        if self.declared:
            return
        limits = {h.name: h.limit for h in self.registry.handlers() if h.limit is not None}
        rates = {h.name: h.rate for h in self.registry.handlers() if h.rate is not None}
        try:
            for queue in self.queues:
                await self.store.set_handler_limits(queue, limits)
                await self.store.set_handler_rates(queue, rates)
            await self.store.register_schedules([info_of(name, sched) for name, sched in self.schedules()])
        except OUTAGE_ERRORS as exc:
            self.state.outage.failed("declare", exc)
            return
        self.declared = True

    async def run(self) -> None:
        """Enqueue each fire time as a job with a deterministic id: every worker does it, the
        store's id dedup keeps one. Times come from the store's clock (see schedules.py)."""
        state = self.state
        entries = [(info_of(name, sched), sched) for name, sched in self.schedules()]
        catch_up = self.settings.retention_seconds
        last: dict[str, float] = {}
        names = ",".join(info.name for info, _ in entries)
        log.info(fmt("scheduler_started", worker=state.worker_id, schedules=names))
        while not state.stop.is_set():
            wait = 1.0
            try:
                now = await self.store.server_time()
                for info, sched in entries:
                    fire = due_fire(sched, now, catch_up)
                    if fire is not None and last.get(info.name) != fire:
                        job = await self.store.enqueue(fire_spec(info, fire))
                        last[info.name] = fire
                        log.debug(fmt("schedule_fired", worker=state.worker_id, schedule=info.name,
                                      job=job.id))
                    upcoming = sched.next_after(now)
                    if upcoming is not None:
                        wait = min(wait, upcoming - now)
            except OUTAGE_ERRORS as exc:
                state.outage.failed("schedule", exc)
            except Exception as exc:
                state.unexpected("scheduler_error", exc)
            await state.sleep_unless_stopped(max(0.01, wait + 0.002))
