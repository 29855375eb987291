"""One small client the `bagbot` CLI talks through: the job store directly, or a backend over HTTP.

Both speak plain JSON dicts (the API's job shape), so every command and the
smoke test run unchanged against a local Redis or a deployed backend. Every
failure becomes an `OpsError` that carries the CLI's exit code.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from backend.workers.models import JobSpec, JobState

if TYPE_CHECKING:
    from backend.workers.event_feed import EventFeed

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
    async def purge(self, older_than: float, queues: list[str] | None) -> int: ...

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


# -- through the store -------------------------------------------------------------


class StoreClient(Client):
    """Talks to the JobStore contract in this process (JOB_STORE=redis for shared data)."""

    def __init__(self, store: Any, where: str) -> None:
        from backend.workers.job_store import JobStore

        self.store: JobStore = store
        self.where = where
        self._events: EventFeed | None = None
        self._events_broken = False

    async def enqueue(self, body: JSONDict) -> JSONDict:
        spec = JobSpec(
            name=body["name"],
            args=list(body.get("args") or []),
            kwargs=dict(body.get("kwargs") or {}),
            queue=body.get("queue") or "default",
            id=body.get("id"),
            delay=body.get("delay"),
            priority=int(body.get("priority") or 0),
            max_attempts=int(body.get("max_attempts") or 3),
            timeout=body.get("timeout"),
            unique_key=body.get("unique_key"),
            events=bool(body.get("events")),
        )
        async with self._errors():
            job = await self.store.enqueue(spec)
        return job.to_json()

    async def get(self, job_id: str, queue: str | None = None) -> JSONDict:
        async with self._errors():
            job = await self.store.get(job_id, queue)
        if job is None:
            raise OpsError(f"no job {job_id}", ExitCode.NOT_FOUND)
        return job.to_json()

    async def list_jobs(
        self, queue: str | None, state: str | None, name: str | None, limit: int, cursor: str | None
    ) -> Page:
        async with self._errors():
            page = await self.store.list_jobs(
                queue=queue, state=JobState(state) if state else None, name=name, limit=limit, cursor=cursor
            )
        return Page([job.to_json() for job in page.jobs], page.cursor)

    async def cancel(self, job_id: str, queue: str | None = None) -> JSONDict:
        async with self._errors():
            return (await self.store.cancel(job_id, queue)).to_json()

    async def retry(self, job_id: str, queue: str | None = None) -> JSONDict:
        async with self._errors():
            return (await self.store.retry(job_id, queue)).to_json()

    async def counts(self) -> dict[str, dict[str, int]]:
        async with self._errors():
            return await self.store.counts()

    async def schedules(self) -> list[JSONDict]:
        from backend.workers.schedules import ScheduleError, schedule_from_info

        async with self._errors():
            now = await self.store.server_time()
            listed = await self.store.list_schedules()
        out = []
        for info in listed:
            try:
                next_fire = schedule_from_info(info).next_after(now)
            except ScheduleError:
                next_fire = None
            out.append(info.to_json() | {"next_fire": next_fire})
        return out

    async def wait_change(self, job: JSONDict) -> None:
        """Woken by the job's events (Redis pub/sub) when it asked for them; re-reads at least
        once a second anyway (pub/sub is best effort), and polls if it cannot subscribe."""
        if not job.get("events") or self._events_broken:
            await asyncio.sleep(0.1)
            return
        if self._events is None:
            from backend.workers.event_feed import EventFeed

            self._events = EventFeed(self.store, [str(job.get("queue") or "default")])
        deadline = asyncio.get_running_loop().time() + 1.0
        try:
            while (remaining := deadline - asyncio.get_running_loop().time()) > 0:
                event = await self._events.get(remaining)
                if event is None or event[0] == job["id"]:
                    return
        except Exception:  # no pub/sub here (e.g. a restricted server): poll instead
            self._events_broken = True

    async def workers(self) -> list[JSONDict]:
        async with self._errors():
            return [w.to_json() for w in await self.store.list_workers()]

    async def purge(self, older_than: float, queues: list[str] | None) -> int:
        async with self._errors():
            return await self.store.purge(older_than, queues)

    async def ready(self) -> tuple[bool, JSONDict]:
        health = await self.store.health()
        body = {
            "ok": health.ok,
            "backend": health.backend,
            "version": health.version,
            "maxmemory_policy": health.maxmemory_policy,
            "detail": health.detail,
        }
        return health.ok, body

    async def metrics_text(self) -> str | None:
        return None

    async def close(self) -> None:
        if self._events is not None:
            await self._events.close()
        await self.store.close()

    def _errors(self) -> _StoreErrors:
        return _StoreErrors(self.where)


class _StoreErrors:
    """Maps store and Redis errors to OpsError (async context manager)."""

    def __init__(self, where: str) -> None:
        self.where = where

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if exc is None:
            return
        mapped = map_store_error(exc, self.where)
        if mapped is not None:
            raise mapped from None


def map_store_error(exc: BaseException, where: str) -> OpsError | None:
    """The OpsError for a store/Redis exception, or None to let it propagate."""
    from redis import exceptions as redis_errors

    from backend.workers.job_store import (
        IllegalTransitionError,
        JobNotFoundError,
        StoreFullError,
        StoreUnavailableError,
    )
    from backend.workers.rules import InvalidJobError

    if isinstance(exc, JobNotFoundError):
        return OpsError(str(exc) or "no such job", ExitCode.NOT_FOUND)
    if isinstance(exc, IllegalTransitionError):
        return OpsError(str(exc), ExitCode.REFUSED)
    if isinstance(exc, StoreFullError):
        return OpsError(f"Redis is out of memory: {exc}", ExitCode.REFUSED)
    if isinstance(exc, InvalidJobError):
        return OpsError(str(exc), ExitCode.USAGE)
    if isinstance(
        exc, StoreUnavailableError | redis_errors.ConnectionError | redis_errors.TimeoutError | OSError
    ):
        text = str(exc)
        message = text if where in text else f"job store unavailable at {where}: {text}"
        return OpsError(message, ExitCode.UNAVAILABLE)
    return None


# -- through a backend's HTTP API --------------------------------------------------------


class HttpClient(Client):
    """Talks to a running backend (DESIGN §9) with the standard library only."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 15.0) -> None:
        self.base = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.where = self.base

    async def enqueue(self, body: JSONDict) -> JSONDict:
        payload = {key: value for key, value in body.items() if value is not None}
        return _as_dict(await self._call("POST", "/api/jobs", payload))

    async def get(self, job_id: str, queue: str | None = None) -> JSONDict:
        query = f"?queue={_q(queue)}" if queue else ""
        return _as_dict(await self._call("GET", f"/api/jobs/{_q(job_id)}{query}"))

    async def list_jobs(
        self, queue: str | None, state: str | None, name: str | None, limit: int, cursor: str | None
    ) -> Page:
        params = {"queue": queue, "state": state, "name": name, "limit": str(limit), "cursor": cursor}
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v})
        data = await self._call("GET", f"/api/jobs?{query}")
        if isinstance(data, list):
            return Page(data, None)
        return Page(list(data.get("jobs") or data.get("items") or []), data.get("cursor") or None)

    async def cancel(self, job_id: str, queue: str | None = None) -> JSONDict:
        return _as_dict(await self._call("POST", f"/api/jobs/{_q(job_id)}/cancel"))

    async def retry(self, job_id: str, queue: str | None = None) -> JSONDict:
        return _as_dict(await self._call("POST", f"/api/jobs/{_q(job_id)}/retry"))

    async def counts(self) -> dict[str, dict[str, int]]:
        data = await self._call("GET", "/api/queues")
        if isinstance(data, dict) and isinstance(data.get("queues"), dict | list):
            data = data["queues"]
        if isinstance(data, list):  # [{"queue"|"name": q, "counts": {...}}] or flat rows
            out: dict[str, dict[str, int]] = {}
            for row in data:
                name = row.get("queue") or row.get("name")
                counts = row.get("counts") or {k: v for k, v in row.items() if isinstance(v, int)}
                out[str(name)] = {str(k): int(v) for k, v in counts.items()}
            return out
        return {str(q): {str(s): int(n) for s, n in c.items()} for q, c in data.items()}

    async def schedules(self) -> list[JSONDict]:
        data = await self._call("GET", "/api/schedules")
        return list(data.get("schedules") or []) if isinstance(data, dict) else []

    async def workers(self) -> list[JSONDict]:
        data = await self._call("GET", "/api/workers")
        if isinstance(data, dict):
            data = data.get("workers") or []
        return list(data)

    async def purge(self, older_than: float, queues: list[str] | None) -> int:
        raise OpsError(
            "purge is not offered over HTTP: run it with JOB_STORE=redis and REDIS_URL", ExitCode.USAGE
        )

    async def ready(self) -> tuple[bool, JSONDict]:
        try:
            status, raw = await asyncio.to_thread(self._request, "GET", "/api/ready", None)
        except OpsError as exc:
            return False, {"detail": str(exc)}
        body = _parse_json(raw)
        return status == 200, body if isinstance(body, dict) else {"detail": raw.decode(errors="replace")}

    async def metrics_text(self) -> str | None:
        status, raw = await asyncio.to_thread(self._request, "GET", "/api/metrics", None)
        if status != 200:
            raise OpsError(f"GET /api/metrics answered {status}", ExitCode.FAILED)
        return raw.decode(errors="replace")

    async def _call(self, method: str, path: str, payload: JSONDict | None = None) -> Any:
        status, raw = await asyncio.to_thread(self._request, method, path, payload)
        data = _parse_json(raw)
        if 200 <= status < 300:
            return data
        detail = data.get("detail") if isinstance(data, dict) else raw.decode(errors="replace")[:300]
        hint = ""
        if status == 401:
            hint = " (pass --token or set BAGBOT_API_TOKEN to the backend's token)"
        raise OpsError(f"{method} {path} answered {status}: {detail}{hint}", _code_for_status(status))

    def _request(self, method: str, path: str, payload: JSONDict | None) -> tuple[int, bytes]:
        headers = {"Accept": "application/json"}
        data = None
        if payload is not None or method == "POST":
            data = json.dumps(payload or {}).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return int(response.status), response.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise OpsError(f"cannot reach {self.base}: {reason}", ExitCode.UNAVAILABLE) from None


def _q(job_id: str) -> str:
    return urllib.parse.quote(job_id, safe="")


def _as_dict(data: Any) -> JSONDict:
    if isinstance(data, dict) and isinstance(data.get("job"), dict):
        return dict(data["job"])
    if not isinstance(data, dict):
        raise OpsError(f"unexpected answer from the backend: {data!r:.200}", ExitCode.FAILED)
    return data


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _code_for_status(status: int) -> ExitCode:
    if status == 404:
        return ExitCode.NOT_FOUND
    if status in (409, 507):
        return ExitCode.REFUSED
    if status in (502, 503, 504):
        return ExitCode.UNAVAILABLE
    if status in (400, 401, 403, 413, 422):
        return ExitCode.USAGE
    return ExitCode.FAILED

