"""GET /api/events: job events as Server-Sent Events, for the dashboard and other live views.

Only jobs enqueued with `events: true` publish events (docs/features.md). Each message is
`data: {"id": ..., "event": <new state | "progress" | "cancel_requested">}`; clients re-read
the job. All streams share one subscription (backend/api/event_hub.py), and at most
`BAGBOT_MAX_EVENT_STREAMS` are open at once. The stream ends after `max_seconds` (default 5;
EventSource reconnects by itself within `retry` ms, which also picks up queues created since):
uvicorn waits for open responses at shutdown, so a long stream would hold up every restart
while a dashboard is open.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import StreamingResponse

from backend.api.deps import SettingsDep, StoreDep
from backend.api.event_hub import EventHub, Stream, StreamsFullError
from backend.workers.rules import validate_queue

router = APIRouter(prefix="/api/events", tags=["events"])

RETRY_AFTER_SECONDS = 5  # a refused stream: streams last `max_seconds`, so one frees up soon


def event_hub(request: Request) -> EventHub:
    """The app's hub, made on first use (the lifespan closes it); one per app, so one subscription."""
    hub: EventHub | None = request.app.state.event_hub
    if hub is None:
        settings = request.app.state.settings
        hub = request.app.state.event_hub = EventHub(
            request.app.state.store, settings.queues, settings.max_event_streams)
    return hub


# Not in the OpenAPI schema: an open-ended stream is not something a schema fuzzer can call.
@router.get("", include_in_schema=False)
async def job_events(
    request: Request,
    store: StoreDep,
    settings: SettingsDep,
    queue: str | None = None,
    max_seconds: Annotated[float, Query(ge=0.1, le=60)] = 5.0,
) -> StreamingResponse:
    """Events of opted-in jobs on `queue` (default: every known queue); 503 + Retry-After when
    BAGBOT_MAX_EVENT_STREAMS streams are open."""
    if queue is not None:
        validate_queue(queue)
    hub = event_hub(request)
    queues = [queue] if queue is not None else await hub.known_queues()
    try:
        stream = hub.open(queues, lasting=max_seconds)
    except StreamsFullError as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from exc
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(_stream(hub, stream, max_seconds), media_type="text/event-stream",
                             headers=headers)


async def _stream(hub: EventHub, stream: Stream, max_seconds: float) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_seconds
    try:
        yield "retry: 200\n: connected\n\n"
        while (remaining := deadline - loop.time()) > 0:
            event = await stream.get(min(remaining, 15.0))
            if event is None:
                yield ": keep-alive\n\n"
                continue
            yield f"data: {json.dumps({'id': event[0], 'event': event[1]})}\n\n"
    finally:
        hub.close(stream)
