"""A handler result JSON cannot carry (NaN, ±Infinity) fails the run instead of being stored as null."""

from __future__ import annotations

import asyncio
import math

import pytest

from backend.config import Settings
from backend.workers.handlers import HandlerRegistry
from backend.workers.memory_job_store import MemoryJobStore
from backend.workers.models import JobSpec, JobState
from backend.workers.orchestration import Worker
from backend.workers.rules import InvalidJobError, check_json

SETTINGS = Settings(heartbeat_seconds=0.1, lease_seconds=1.0, concurrency=2, shutdown_grace_seconds=2.0)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, [1, {"a": math.nan}], {"x": (1, math.inf)}])
def test_check_json_refuses_non_finite_numbers_naming_where(value: object) -> None:
    with pytest.raises(InvalidJobError, match="finite"):
        check_json("result", value)


def test_check_json_keeps_nulls_and_finite_floats() -> None:
    assert check_json("args", [None, 1.5, {"a": None}, "null"]) == b'[null,1.5,{"a":null},"null"]'


@pytest.mark.parametrize("result", [math.nan, {"ratio": math.inf}])
async def test_a_handler_returning_a_non_finite_number_fails_its_run(result: object) -> None:
    store, registry = MemoryJobStore(), HandlerRegistry()

    @registry.task("t.nan")
    async def nan() -> object:
        return result

    worker = Worker(store, SETTINGS, registry, worker_id="w-nan")
    await worker.start()
    try:
        job = await store.enqueue(JobSpec("t.nan", max_attempts=3))
        for _ in range(400):
            got = await store.get(job.id)
            assert got is not None
            if got.is_terminal:
                break
            await asyncio.sleep(0.025)
        assert got.state is JobState.FAILED and got.attempts == 1 and got.result is None
        assert got.last_error is not None and got.last_error.type == "NonJsonResult"
        assert "finite" in got.last_error.message
    finally:
        await worker.stop()
        await store.close()
