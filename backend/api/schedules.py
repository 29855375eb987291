"""Periodic jobs as the workers declared them, with their next fire time (docs/features.md)."""

from __future__ import annotations

from fastapi import APIRouter

from backend.api.deps import StoreDep
from backend.api.schemas import ErrorOut, ScheduleOut, SchedulesOut
from backend.workers.schedules import ScheduleError, schedule_from_info

router = APIRouter(prefix="/api/schedules", tags=["schedules"])


@router.get("", responses={503: {"model": ErrorOut}})
async def list_schedules(store: StoreDep) -> SchedulesOut:
    """Every declared schedule: name, handler, queue, cron expression or interval, time zone and
    the next fire time on the store's clock."""
    now = await store.server_time()
    out = []
    for info in await store.list_schedules():
        try:
            next_fire = schedule_from_info(info).next_after(now)
        except ScheduleError:
            next_fire = None  # declared by a newer worker in a form this process cannot read
        out.append(ScheduleOut(name=info.name, handler=info.handler, queue=info.queue,
                               expression=info.expression, timezone=info.timezone, next_fire=next_fire))
    return SchedulesOut(schedules=out)
