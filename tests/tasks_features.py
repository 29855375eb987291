"""Handlers for the feature tests (cancel of running jobs, progress, concurrency and rate limits).

Concurrency is measured in Redis itself: each run increments a counter on start and
decrements it on end, keeping the maximum seen in one atomic script, so the test
reads the largest overlap across all worker processes. Starts and ends are also
appended to BAGBOT_TEST_RECORD (see tests/tasks_for_tests.py).
"""

from __future__ import annotations

import asyncio
import os
import time

import redis
import redis.asyncio as aioredis

from backend.workers.handlers import report_progress, task
from tests.tasks_for_tests import _mark

_ENTER = """
local n = redis.call('INCR', KEYS[1])
if n > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], n) end
return n
"""


def overlap_keys(prefix: str, key: str) -> tuple[str, str]:
    """The Redis keys holding the current and the maximum overlap of `key`'s runs."""
    return f"{prefix}:test:overlap:{key}:now", f"{prefix}:test:overlap:{key}:max"


@task("features.limited_job")
async def limited_job(key: str, seconds: float = 0.05) -> str:
    """Runs `seconds` while counted as one running job of `key`."""
    now_key, max_key = overlap_keys(os.environ["BAGBOT_PREFIX"], key)
    client = aioredis.Redis.from_url(os.environ["REDIS_URL"])
    try:
        await client.eval(_ENTER, 2, now_key, max_key)
        _mark("start")
        await asyncio.sleep(seconds)
        _mark("end")
        await client.decr(now_key)
    finally:
        await client.aclose()
    return key


@task("features.limited_handler", limit=2)
async def limited_handler(seconds: float = 0.05) -> str:
    """A handler declared with limit=2: at most two of its jobs run at once, whatever the key."""
    return await limited_job("handler", seconds)


@task("features.rated_handler", rate="20/s")
async def rated_handler() -> str:
    """A handler declared with rate="20/s": its starts are 50 ms apart across all workers."""
    _mark("start")
    return "ok"


@task("features.long_async")
async def long_async(seconds: float) -> str:
    _mark("start")
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        _mark("cancelled")
        raise
    _mark("end")
    return "finished"


@task("features.long_sync")
def long_sync(seconds: float) -> str:
    """A sync handler cannot be interrupted: it runs on, and its outcome is discarded."""
    _mark("start")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
    _mark("end")
    return "finished"


@task("features.progress_async")
async def progress_async(steps: int, pause: float = 0.05) -> int:
    for step in range(1, steps + 1):
        report_progress(step / steps, f"step {step} of {steps}")
        await asyncio.sleep(pause)
    return steps


@task("features.progress_sync")
def progress_sync(steps: int, pause: float = 0.05) -> int:
    for step in range(1, steps + 1):
        report_progress(step, f"item {step}")
        time.sleep(pause)
    return steps


def read_overlap(url: str, prefix: str, key: str) -> int:
    with redis.Redis.from_url(url) as client:
        raw = client.get(overlap_keys(prefix, key)[1])
    return int(raw or 0)
