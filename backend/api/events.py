"""GET /api/events: job events as Server-Sent Events, for the dashboard and other live views.

Only jobs enqueued with `events: true` publish events (docs/features.md). Each message is
`data: {"id": ..., "event": <new state | "progress" | "cancel_requested">}`; clients re-read
the job. The stream ends after `max_seconds` (default 5; EventSource reconnects by itself
within `retry` ms, which also picks up queues created since): uvicorn waits for open
responses at shutdown, so a long stream would hold up every restart while a dashboard is open.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from backend.api.deps import SettingsDep, StoreDep
from backend.workers.event_feed import EventFeed
from backend.workers.job_store import JobStore
from backend.workers.rules import validate_queue

router = APIRouter(prefix="/api/events", tags=["events"])


# Not in the OpenAPI schema: an open-ended stream is not something a schema fuzzer can call.
@router.get("", include_in_schema=False)
async def job_events(
    store: StoreDep,
    settings: SettingsDep,
    queue: str | None = None,
    max_seconds: Annotated[float, Query(ge=0.1, le=60)] = 5.0,
) -> StreamingResponse:
    """Events of opted-in jobs on `queue` (default: every known queue)."""
    if queue is not None:
        validate_queue(queue)
    queues = [queue] if queue is not None else (await store.queues() or list(settings.queues))
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(_stream(store, queues, max_seconds), media_type="text/event-stream",
                             headers=headers)


async def _stream(store: JobStore, queues: list[str], max_seconds: float) -> AsyncIterator[str]:
    yield "retry: 200\n: connected\n\n"
    feed = EventFeed(store, queues)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_seconds
    try:
        while (remaining := deadline - loop.time()) > 0:
            event = await feed.get(min(remaining, 15.0))
            if event is None:
                yield ": keep-alive\n\n"
                continue
            yield f"data: {json.dumps({'id': event[0], 'event': event[1]})}\n\n"
    finally:
        await feed.close()
