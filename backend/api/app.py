"""The FastAPI backend: JSON API, Prometheus metrics, health probes and the dashboard.

`app = create_app()` reads settings from the environment but connects to
nothing at import time: the store is opened in the lifespan, where a failure
is logged and reported by /api/ready instead of crashing the import.

With the memory store, the lifespan also runs a worker inside this event loop
(embedded mode), because no other process can see this process's memory.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from backend.api import bulk, dashboard, events, health, jobs, metrics, queues, schedules, workers
from backend.api.errors import install_error_handlers
from backend.api.event_hub import EventHub
from backend.api.limits import BodyLimitMiddleware
from backend.config import Settings
from backend.workers.job_store import JobStore
from backend.workers.models import StoreHealth
from backend.workers.orchestration import Worker
from backend.workers.stores import create_job_store

log = logging.getLogger("bagbot.api")

API_VERSION = "0.1.0"


def create_app(settings: Settings | None = None, store: JobStore | None = None) -> FastAPI:
    """Build the app. A given `store` is used as is and left open at shutdown (its owner closes
    it); without one, the lifespan creates the store `settings` names and closes it at the end."""
    settings = settings if settings is not None else Settings.from_env()
    app = FastAPI(
        title="bagbot jobs",
        version=API_VERSION,
        description="Durable background jobs on Redis: enqueue and inspect jobs, Prometheus metrics, health.",
        lifespan=_lifespan,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.owns_store = store is None
    app.state.embedded_worker = None
    app.state.startup_health = None
    app.state.reset_watcher = None
    app.state.event_hub = None  # made by the first /api/events stream: one subscription for all of them
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes,
                       timeout_seconds=settings.body_timeout_seconds)
    for module in (bulk, jobs, queues, workers, schedules, events, metrics, health, dashboard):
        app.include_router(module.router)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    _configure_logging(settings)
    if app.state.store is None:
        app.state.store = create_job_store(settings)
    store: JobStore = app.state.store
    watching: asyncio.Task[None] | None = None
    stop_watching = asyncio.Event()
    try:
        app.state.startup_health = await check_store(store, settings)
        # Embedded mode follows the store, not the setting: a store only this process can see
        # needs an in-process worker; with Redis, workers run apart.
        if store.needs_embedded_worker:
            app.state.embedded_worker = await _start_embedded_worker(store, settings)
        else:
            log.info("job store is %s: jobs run in separate worker processes (python -m backend.workers)",
                     store.backend)
        watcher = app.state.reset_watcher = store.reset_watch(settings.queues, who="backend")
        if watcher is not None:  # notices within one heartbeat interval that Redis lost its data
            watching = asyncio.create_task(watcher.run(settings.heartbeat_seconds, stop_watching))
        yield
    finally:
        hub: EventHub | None = app.state.event_hub
        if hub is not None:
            app.state.event_hub = None
            await hub.aclose()
        if watching is not None:
            stop_watching.set()
            await asyncio.wait({watching}, timeout=10)
        worker: Worker | None = app.state.embedded_worker
        if worker is not None:
            await worker.stop()
            app.state.embedded_worker = None
        if app.state.owns_store:
            await store.close()
            app.state.store = None


async def check_store(store: JobStore, settings: Settings) -> StoreHealth:
    """Read the store's health once at start-up and say loudly what is wrong with it."""
    health = await store.health()
    where = store.label
    if not health.ok:
        log.error("job store %s is not answering at start-up (%s); /api/ready answers 503 until it does",
                  where, health.detail)
    elif not health.policy_ok:
        log.warning(
            "Redis at %s has maxmemory-policy %r: under memory pressure Redis may EVICT JOBS silently."
            " Set maxmemory-policy noeviction (render.yaml: maxmemoryPolicy: noeviction).",
            where, health.maxmemory_policy,
        )
    else:
        log.info("job store %s ready (version %s, maxmemory-policy %s)",
                 where, health.version or "-", health.maxmemory_policy or "-")
    return health


async def _start_embedded_worker(store: JobStore, settings: Settings) -> Worker:
    """A worker in this event loop: with the memory store no other process could run the jobs."""
    for module in settings.tasks:  # BAGBOT_TASKS: the app's own handlers register on import
        importlib.import_module(module)
    worker = Worker(store, settings)
    await worker.start()
    log.info("embedded worker started on queues %s (JOB_STORE=memory)", ", ".join(settings.queues))
    return worker


def _configure_logging(settings: Settings) -> None:
    """Give our loggers a handler when nobody configured logging (uvicorn only sets up its own)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=settings.log_level,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("bagbot").setLevel(settings.log_level)


app = create_app()
