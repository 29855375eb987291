"""One small client the `bagbot` CLI talks through: the job store directly, or a backend over HTTP.

Both speak plain JSON dicts (the API's job shape), so every command and the
smoke test run unchanged against a local Redis or a deployed backend. Every
failure becomes an `OpsError` that carries the CLI's exit code. This module is
the interface; `store_client.py` and `http_client.py` are the two sides of it.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

JSONDict = dict[str, Any]


class ExitCode(IntEnum):
    """What `bagbot` exits with; scripts and CI read these."""

    OK = 0
    FAILED = 1  # a check or the smoke test failed, or the job waited for ended failed/cancelled
    USAGE = 2  # bad arguments or configuration (click uses 2 for usage errors too)
    UNAVAILABLE = 3  # Redis or the backend cannot be reached
    NOT_FOUND = 4  # no such job
    REFUSED = 5  # illegal transition, or Redis is out of memory


class OpsError(Exception):
    """An error to show the operator, with the exit code it maps to."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class Page:
    """One page of `jobs list`, and the cursor of the next (None on the last)."""

    jobs: list[JSONDict]
    cursor: str | None


class Client(ABC):
    """The operations the CLI needs, whatever is behind them."""

    where: str = ""

    @abstractmethod
    async def enqueue(self, body: JSONDict) -> JSONDict: ...

    @abstractmethod
    async def get(self, job_id: str, queue: str | None = None) -> JSONDict: ...

    @abstractmethod
    async def list_jobs(
        self, queue: str | None, state: str | None, name: str | None, limit: int, cursor: str | None
    ) -> Page: ...

    @abstractmethod
    async def cancel(self, job_id: str, queue: str | None = None) -> JSONDict: ...

    @abstractmethod
    async def retry(self, job_id: str, queue: str | None = None) -> JSONDict: ...

    @abstractmethod
    async def counts(self) -> dict[str, dict[str, int]]: ...

    @abstractmethod
    async def workers(self) -> list[JSONDict]: ...

    @abstractmethod
    async def purge(self, older_than: float, queues: list[str] | None, state: str | None = None) -> int:
        """Delete finished jobs (bounded per call: MAX_PURGE); how many went."""

    @abstractmethod
    async def bulk(self, action: str, body: JSONDict) -> JSONDict:
        """`retry` or `cancel` the jobs of a filter body (the API's); {matched, moved, more}."""

    @abstractmethod
    async def set_paused(self, queue: str, paused: bool) -> JSONDict:
        """Pause or resume a queue; {queue, paused}."""

    @abstractmethod
    async def paused(self) -> set[str]:
        """The queues paused now."""

    @abstractmethod
    async def ready(self) -> tuple[bool, JSONDict]:
        """Whether the store answers, and what the health check said."""

    @abstractmethod
    async def metrics_text(self) -> str | None:
        """The Prometheus exposition, or None when this client has no endpoint to read."""

    async def close(self) -> None:
        return None

    async def schedules(self) -> list[JSONDict]:
        """Declared periodic jobs with their next fire time (docs/features.md)."""
        return []

    async def wait_change(self, job: JSONDict) -> None:
        """Return when `job` may have changed: at once on a job event where this client can
        subscribe (jobs enqueued with events on), else after a short poll interval."""
        await asyncio.sleep(0.1)
