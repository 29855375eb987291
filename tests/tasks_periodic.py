"""A periodic handler for tests/test_periodic.py: fires every second, records each run."""

from __future__ import annotations

from backend.workers.handlers import task
from backend.workers.schedules import Every
from tests.tasks_for_tests import _mark


@task("periodic.tick", schedule=Every(seconds=1, name="tick"))
async def tick() -> None:
    _mark("start")
