"""Keeping claims alive: registration, heartbeats that extend every lease this worker holds, and
what a heartbeat learns back (claims gone stale, cancel requests, the store losing its data).

Housekeeping rides on the heartbeat: expired leases of dead workers are recovered, dead workers'
entries dropped and old jobs purged by whichever worker gets there, so no extra process is needed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from backend.config import Settings
from backend.workers.handlers import HandlerRegistry
from backend.workers.job_store import JobStore
from backend.workers.logfmt import fmt
from backend.workers.models import Claim, HandlerPolicy, Job, WorkerInfo
from backend.workers.outages import OUTAGE_ERRORS, ReconnectBackoff
from backend.workers.reporting import Reporter
from backend.workers.rules import DEFAULT_MAX_ATTEMPTS
from backend.workers.worker_state import WorkerState

log = logging.getLogger("bagbot.worker")

PURGE_EVERY_SECONDS = 300.0


class Leases:
    """The worker's registry entry and the leases of its claims, running or not yet reported."""

    def __init__(
        self,
        store: JobStore,
        settings: Settings,
        state: WorkerState,
        info: WorkerInfo,
        registry: HandlerRegistry,
        reporter: Reporter,
        declare: Callable[[], Awaitable[None]],
    ) -> None:
        self.store = store
        self.settings = settings
        self.state = state
        self.info = info
        self.registry = registry
        self.reporter = reporter
        self.declare = declare  # housekeeping retries it until the store has taken it once
        self.queues = list(info.queues)
        self.lease = settings.lease_seconds
        self.stopped = False  # set by shutdown: the heartbeat loop ends at its next turn
        self._reset_watch = store.reset_watch(self.queues, who=state.worker_id)
        self._last_purge = float("-inf")
        self._progress_logged = (0, 0, 0)

    # -- start-up ----------------------------------------------------------------------

    async def register(self) -> bool:
        """Add this worker to the store's registry, waiting out an outage; False if stopped first."""
        state = self.state
        backoff = ReconnectBackoff()
        while not state.stop.is_set():
            try:
                self.info.handlers = self.registry.names()  # tidy keeps the counters of these names
                await self.store.register_worker(self.info)
                await self.advertise()
                break
            except OUTAGE_ERRORS as exc:
                state.outage.failed("register", exc)
                await state.sleep_unless_stopped(backoff.next())
        else:
            log.info(fmt("worker_stopped", worker=state.worker_id, reason="stopped before it could register"))
            return False
        state.outage.recovered()
        state.registered = True
        log.info(
            "✓ Worker registration successful "
            + fmt(
                "worker_registered",
                worker=state.worker_id,
                pid=self.info.pid,
                queues=",".join(self.queues),
                concurrency=self.info.concurrency,
                store=self.store.backend,
                url=self.store.label if self.store.label != self.store.backend else None,
                heartbeat=self.settings.heartbeat_seconds,
                lease=self.lease,
                handlers=len(self.registry),
            )
        )
        return True

    async def check_store(self) -> None:
        """Warn once at start-up about a store that will lose jobs (unhealthy, or evicting)."""
        health = await self.store.health()
        if not health.ok:
            log.warning(fmt("store_unhealthy", worker=self.state.worker_id, detail=health.detail))
        elif not health.policy_ok:
            log.warning(
                fmt(
                    "redis_policy_unsafe",
                    worker=self.state.worker_id,
                    maxmemory_policy=health.maxmemory_policy,
                    detail="Redis may EVICT jobs when full; set maxmemory-policy noeviction",
                )
            )

    # -- heartbeats --------------------------------------------------------------------

    async def run(self) -> None:
        """Beat every heartbeat interval until shutdown stops it; back off during an outage."""
        state = self.state
        interval = self.settings.heartbeat_seconds
        backoff = ReconnectBackoff(cap=min(5.0, interval))
        delay = interval
        while not self.stopped:
            if state.outage.since is None:
                await asyncio.sleep(delay)
            else:  # backing off: beat again as soon as any loop finds the store back
                await state.outage.pause(delay)
            try:
                await self.beat()
                if not state.closing:
                    await self.housekeeping()
            except OUTAGE_ERRORS as exc:
                state.outage.failed("heartbeat", exc)
                delay = backoff.next()
                continue
            except Exception as exc:
                state.unexpected("heartbeat_error", exc)
                delay = interval
                continue
            state.outage.recovered()
            state.expected_again("heartbeat_error")
            backoff.reset()
            delay = interval

    async def confirm(self, jobs: list[Job]) -> list[Job]:
        """Tell the store these claims arrived, before any of their handlers starts: an expiry is then
        a charged run (LeaseExpired), while a claim never confirmed (its reply was lost) is given back
        uncounted. So a handler never starts on an unconfirmed claim: through an outage the confirm
        (one call for the batch) is re-sent with backoff until it lands.
        Returns the jobs to start: not those whose claim is gone meanwhile, none if the worker stops
        first (their claims stay unconfirmed: they are given back, uncounted, when the leases expire)."""
        if not jobs:
            return jobs
        claims = [Claim(job.queue, job.id, job.token or "") for job in jobs]
        backoff = ReconnectBackoff(cap=min(5.0, self.settings.heartbeat_seconds))
        while True:
            try:
                stale = set(await self.store.confirm(claims, self.lease))
                break
            except OUTAGE_ERRORS as exc:
                self.state.outage.failed("confirm", exc)
                await self.state.sleep_unless_stopped(backoff.next())
                if self.state.stop.is_set():
                    log.info(fmt("claims_left_unconfirmed", worker=self.state.worker_id, jobs=len(jobs),
                                 action="not started; given back uncounted when their leases expire"))
                    return []
            except Exception as exc:  # not an outage: a bug; the claims are ours, so run them
                self.state.unexpected("confirm_error", exc)
                return jobs
        for claim in stale:
            log.warning(fmt("job_lease_lost", worker=self.state.worker_id, job=claim.job_id,
                            queue=claim.queue, action="not started: the claim was gone before its confirm"))
        return [job for job, claim in zip(jobs, claims, strict=True) if claim not in stale]

    def claims_held(self) -> list[Claim]:
        """Running claims and those whose outcome is not reported yet: all their leases are kept."""
        return [run.claim for run in self.state.runs.values()] + self.reporter.claims()

    async def beat(self) -> None:
        state = self.state
        self.info.running = len(state.runs)
        reply = await self.store.heartbeat(self.info, self.claims_held(), self.lease)
        stale, vanished = reply.stale, reply.vanished
        for claim in reply.cancel:
            self.cancel_on_request(claim)
        if vanished:
            detail = fmt("worker_reregistered", worker=state.worker_id)
            log.warning(f"worker entry vanished (Redis lost data?) – re-registered {detail}")
        if self._reset_watch is not None and await self._reset_watch.check():
            state.counters.store_resets += 1  # logged by the watcher; running claims came back stale above
        if state.first_time("heartbeat"):
            log.info("✓ Heartbeats being sent " + fmt("first_heartbeat", worker=state.worker_id,
                                                       interval=self.settings.heartbeat_seconds))
        for claim in stale:
            self.drop_stale(claim)
        self._log_progress()
        await self.advertise()  # last: what the heartbeat learnt is acted on whatever this meets

    async def advertise(self) -> None:
        """Say which handlers this worker runs, with their policies (see JobStore.advertise_handlers)."""
        policies = [HandlerPolicy(h.name, h.max_attempts or DEFAULT_MAX_ATTEMPTS, h.backoff)
                    for h in self.registry.handlers()]
        await self.store.advertise_handlers(self.queues, policies)

    def _log_progress(self) -> None:
        """One line per heartbeat with what happened since the last one (nothing when idle)."""
        counters = self.state.counters
        totals = (counters.jobs_done, counters.jobs_retried, counters.jobs_failed)
        if totals != self._progress_logged:
            done, retried, failed = (now - before for now, before in zip(totals, self._progress_logged,
                                                                         strict=True))
            log.info(fmt("progress", worker=self.state.worker_id, done=done, retried=retried, failed=failed,
                         running=len(self.state.runs), total_done=counters.jobs_done))
            self._progress_logged = totals

    def drop_stale(self, claim: Claim) -> None:
        """The store says this claim is no longer ours: stop the handler, report nothing."""
        run = self.state.runs.get(claim)
        if run is not None and run.task is not None and not run.task.done():
            run.cancel_reason = "stale"
            run.task.cancel()
            log.warning(fmt("job_lease_lost", worker=self.state.worker_id, job=claim.job_id,
                            queue=claim.queue, action="handler cancelled; its outcome will not be reported"))
            return
        self.reporter.discard(claim)

    def cancel_on_request(self, claim: Claim) -> None:
        """Someone asked to cancel this running job: stop its handler and report it cancelled.
        An async handler gets CancelledError, a process one's child is killed; a sync one cannot be
        interrupted: its thread runs on to the end (holding its slot), but its outcome is discarded."""
        run = self.state.runs.get(claim)
        if run is None or run.task is None or run.task.done() or run.cancel_reason is not None:
            return  # already finished: its own outcome is reported
        run.cancel_reason = "cancel"
        run.task.cancel()
        handler = self.registry.get(run.job.name)
        if handler is not None and handler.executor == "process":
            action = "child process killed"
        elif handler is None or handler.is_async:
            action = "handler cancelled"
        else:
            action = "sync handler's thread runs on; its outcome is discarded"
        log.info(fmt("job_cancel_requested", worker=self.state.worker_id, job=claim.job_id, queue=claim.queue,
                     name=run.job.name, action=action))

    # -- housekeeping --------------------------------------------------------------------

    async def housekeeping(self) -> None:
        await self.declare()
        recovered = await self.store.recover(self.queues)
        if recovered:
            log.info(fmt("leases_recovered", worker=self.state.worker_id, jobs=recovered))
        workers = await self.store.list_workers(stale_after=3 * self.lease)  # drops dead workers' entries
        if time.monotonic() - self._last_purge >= PURGE_EVERY_SECONDS:
            self._last_purge = time.monotonic()
            # its own queues, and those no live worker serves (nobody else would purge them)
            served = {queue for worker in workers for queue in worker.queues}
            orphans = [queue for queue in await self.store.queues() if queue not in served]
            purged = await self.store.purge(self.settings.retention_seconds, [*self.queues, *orphans])
            if purged:
                log.info(fmt("jobs_purged", worker=self.state.worker_id, jobs=purged))
            tidied = await self.store.tidy(stale_after=3 * self.lease)
            if tidied.names or tidied.queues:
                log.info(fmt("store_tidied", worker=self.state.worker_id, names=tidied.names,
                             queues=",".join(tidied.queues)))
