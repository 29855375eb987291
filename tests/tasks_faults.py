"""Handlers that misbehave, for tests/test_handler_faults.py (BAGBOT_TASKS=tests.tasks_faults).

Each records "start"/"end" lines through tests.tasks_for_tests (BAGBOT_TEST_RECORD), with the pid
of the process that ran it: for `executor="process"` handlers that is the child's pid.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time

from backend.workers.handlers import current_job, report_progress, task
from tests.tasks_for_tests import _mark


class Custom(BaseException):
    """Not an Exception: escapes every `except Exception`."""


class BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")


class Unreadable(BaseException):
    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ is broken")


class Permanent(Exception):
    pass


@task("faults.sys_exit")
def sys_exit() -> None:
    _mark("start")
    sys.exit("sync handler called sys.exit")


@task("faults.async_exit0")
async def async_exit0() -> None:
    _mark("start")
    raise SystemExit(0)


@task("faults.keyboard")
def keyboard() -> None:
    _mark("start")
    raise KeyboardInterrupt("raised by the handler")


@task("faults.async_keyboard")
async def async_keyboard() -> None:
    _mark("start")
    raise KeyboardInterrupt("raised by the async handler")


@task("faults.generator_exit")
async def generator_exit() -> None:
    _mark("start")
    raise GeneratorExit("not a generator")


@task("faults.custom")
async def custom() -> None:
    _mark("start")
    raise Custom("custom base exception")


@task("faults.bad_str")
async def bad_str() -> None:
    _mark("start")
    raise BadStr()


@task("faults.unreadable")
def unreadable() -> None:
    _mark("start")
    raise Unreadable()


@task("faults.own_cancel")
async def own_cancel() -> None:
    _mark("start")
    raise asyncio.CancelledError("the handler's own CancelledError")


@task("faults.runaway", timeout=1)
def runaway(seconds: float) -> str:
    """A sync handler that overruns its 1 s timeout: its thread cannot be stopped."""
    _mark("start")
    time.sleep(seconds)
    _mark("end")
    return "late"


@task("faults.trivial", timeout=1)
def trivial() -> str:
    _mark("start")
    return "ok"


def hold_gil(seconds: float) -> int:
    """Catastrophic backtracking in `re`: one C call that holds the GIL for about `seconds`
    (calibrated here, since each extra character doubles the time)."""
    pattern = re.compile(r"(x+x+)+y")
    n = 12
    while True:
        began = time.perf_counter()
        pattern.match("x" * n)
        if time.perf_counter() - began >= seconds / 32:
            break
        n += 1
    pattern.match("x" * (n + 5))
    return n + 5


@task("faults.gil_process", executor="process", timeout=120)
def gil_process(seconds: float) -> int:
    _mark("start")
    n = hold_gil(seconds)
    report_progress(1.0, "matched")
    _mark("end")
    return n


@task("faults.gil_thread", timeout=120)
def gil_thread(seconds: float) -> int:
    """The same work in the thread executor: it freezes the worker's loop (documented limit)."""
    _mark("start")
    n = hold_gil(seconds)
    _mark("end")
    return n


@task("faults.process_forever", executor="process", timeout=1)
def process_forever() -> None:
    _mark("start")
    while True:  # pure Python, never returns: only killing the child stops it
        pass


@task("faults.process_echo", executor="process", no_retry=(Permanent,))
async def process_echo(value: int, fail: str = "") -> dict[str, object]:
    _mark("start")
    job = current_job()
    report_progress(0.5, "half way")
    print("a handler's print goes to stderr, not into the result channel")
    if fail == "permanent":
        raise Permanent("do not retry me")
    if fail == "exit":
        sys.exit(3)
    out: dict[str, object] = {"value": value, "attempt": job.attempt, "job": job.job_id}
    if job.parent_states:  # a dependant: what its parents gave it crosses the boundary too
        out.update(parents=job.parent_results, counts=job.parent_counts)
    return out


@task("faults.noop_process", executor="process")
def noop_process() -> None:
    """For scripts/executor_figures.py: the cost of the child process alone."""


@task("faults.noop_thread")
def noop_thread() -> None:
    pass


@task("faults.busy_thread", timeout=120)
def busy_thread(seconds: float) -> int:
    """Pure-Python CPU work in a thread: it shares the GIL with the loop, switching every 5 ms."""
    end, count = time.perf_counter() + seconds, 0
    while time.perf_counter() < end:
        count += 1
    return count


@task("faults.gil_only_thread", timeout=120)
def gil_only_thread(seconds: float) -> int:
    return hold_gil(seconds)


@task("faults.gil_only_process", executor="process", timeout=120)
def gil_only_process(seconds: float) -> int:
    return hold_gil(seconds)
