"""`executor="process"`: run one job's handler in a child process of its own.

Why: a thread cannot be stopped, and a handler that holds the GIL (a long regex, a C extension)
freezes the worker's event loop, so heartbeats stop and the lease runs out while the job is still
running. In a child process the work holds the child's GIL, the worker's loop keeps beating, and a
timeout, cancel request or shutdown kills the child (its whole process group) before the outcome is
reported: the job can never run on after its attempt ended.

The protocol is JSON lines, never anything that loads code from data: the worker writes one request
(the handler's module and qualified name, the job's args and context) on the child's stdin; the
child writes progress lines and one final line (result or error) on a private copy of its stdout,
its own stdout being pointed at stderr so a handler's prints cannot corrupt the channel. The child
dies with the worker (PR_SET_PDEATHSIG on Linux), so a killed worker leaves no run going on
behind the job's expiring lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib
import inspect
import os
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Any, BinaryIO

import orjson

from backend.workers.handlers import Handler, JobContext, set_current_job
from backend.workers.models import Job, JobError
from backend.workers.rules import InvalidJobError, check_json

CHILD_MODULE = "backend.workers.process_executor"
MAX_LINE = 64 * 1024 * 1024  # the longest line (a result) the worker reads from a child
_PR_SET_PDEATHSIG = 1


class ChildError(Exception):
    """How the handler's run in the child ended, when it did not return a result."""

    def __init__(self, error: JobError, retryable: bool) -> None:
        super().__init__(f"{error.type}: {error.message}")
        self.error = error
        self.retryable = retryable


async def run_in_process(handler: Handler, job: Job, ctx: JobContext) -> Any:
    """Run `handler` for `job` in a new child process; return its result or raise ChildError.
    Cancelled (timeout, cancel request, stale claim, shutdown): the child is killed first."""
    fn = handler.fn
    request = {
        "module": fn.__module__, "qualname": fn.__qualname__, "args": job.args, "kwargs": job.kwargs,
        "job": [ctx.job_id, ctx.name, ctx.queue, ctx.attempt, ctx.max_attempts],
        "parents": [ctx.parent_states, ctx.parent_results],
        "no_retry": [f"{cls.__module__}:{cls.__qualname__}" for cls in handler.no_retry],
    }
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path for path in sys.path if path))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", CHILD_MODULE, str(os.getpid()),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
        start_new_session=True, limit=MAX_LINE,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(orjson.dumps(request))
        await proc.stdin.drain()
        proc.stdin.close()
        final: dict[str, Any] | None = None
        async for line in proc.stdout:
            message = orjson.loads(line)
            if "progress" in message:
                if ctx.reporter is not None:
                    ctx.reporter(float(message["progress"][0]), str(message["progress"][1]))
            else:
                final = message
        code = await proc.wait()
    finally:
        if proc.returncode is None:
            _kill_group(proc.pid)
            await proc.wait()
    return _outcome(final, code)


def _outcome(final: dict[str, Any] | None, code: int) -> Any:
    if final is None:
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        raise ChildError(JobError("ProcessDied", f"the handler's process {how} before it answered"), True)
    if "result" in final:
        return final["result"]
    error = JobError.from_json(final.get("error")) or JobError("ProcessError", "no error given")
    raise ChildError(error, bool(final.get("retryable", True)))


def _kill_group(pid: int) -> None:
    """SIGKILL the child and anything it started (it leads its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


# -- the child ----------------------------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    """The kernel kills this process when the worker dies (Linux); elsewhere best effort."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the worker died before the death signal was armed
        os._exit(1)


def _resolve(path: str) -> Any:
    module, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _no_retry(paths: list[str]) -> tuple[type[BaseException], ...]:
    found = []
    for path in paths:
        with contextlib.suppress(Exception):
            found.append(_resolve(path))
    return tuple(cls for cls in found if isinstance(cls, type) and issubclass(cls, BaseException))


def _run(request: dict[str, Any], send: Callable[[dict[str, Any]], None]) -> None:
    try:
        fn = _resolve(f"{request['module']}:{request['qualname']}")
    except BaseException as exc:  # a handler the child cannot import will not import on a retry either
        note = f"handler {request['module']}.{request['qualname']} cannot be imported in a child process"
        send({"error": JobError(type(exc).__name__, f"{note}: {exc}").to_json(), "retryable": False})
        return
    no_retry = _no_retry(request["no_retry"])
    job_id, name, queue, attempt, max_attempts = request["job"]
    parent_states, parent_results = request.get("parents") or ({}, {})
    ctx = JobContext(job_id, name, queue, attempt, max_attempts,
                     reporter=lambda value, message: send({"progress": [value, message]}),
                     parent_states=parent_states, parent_results=parent_results)
    set_current_job(ctx)
    try:
        result = fn(*request["args"], **request["kwargs"])
        if inspect.isawaitable(result):
            result = asyncio.run(_awaited(result))
    except BaseException as exc:  # SystemExit, KeyboardInterrupt...: this job's error, like any other
        error = JobError.from_exception(exc, traceback.format_exc())
        send({"error": error.to_json(), "retryable": not (no_retry and isinstance(exc, no_retry))})
        return
    try:
        check_json("result", result)
    except InvalidJobError as exc:
        message = f"{request['job'][1]} returned a value that is not JSON: {exc}"
        send({"error": JobError("NonJsonResult", message).to_json(), "retryable": False})
        return
    send({"result": result})


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _child_main(parent: int) -> int:
    _die_with_parent(parent)
    channel: BinaryIO = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # the handler's own prints go to stderr, not into the channel

    def send(message: dict[str, Any]) -> None:
        channel.write(orjson.dumps(message) + b"\n")

    _run(orjson.loads(sys.stdin.buffer.read()), send)
    sys.stdout.flush()
    sys.stderr.flush()
    return 0


if __name__ == "__main__":
    os._exit(_child_main(int(sys.argv[1])))  # no interpreter teardown: threads a handler left do not hold it
