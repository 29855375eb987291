"""The CLI's client on a running backend's HTTP API (`--url`), with the standard library only.

The only way to reach a memory store, which lives inside the backend process; HTTP statuses
and unreachable hosts become `OpsError`s with the CLI's exit codes.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from backend.ops.client import Client, ExitCode, JSONDict, OpsError, Page


class HttpClient(Client):
    """Talks to a running backend (DESIGN §9) with the standard library only."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 15.0) -> None:
        self.base = check_base_url(base_url)
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

    async def purge(self, older_than: float, queues: list[str] | None, state: str | None = None) -> int:
        purged = 0
        for queue in queues if queues is not None else [None]:
            body = {"older_than": older_than, "queue": queue, "state": state}
            data = await self._call("POST", "/api/jobs/purge", _given(body))
            purged += int(_as_dict(data).get("purged") or 0)
        return purged

    async def bulk(self, action: str, body: JSONDict) -> JSONDict:
        return _as_dict(await self._call("POST", f"/api/jobs/{_q(action)}", _given(body)))

    async def set_paused(self, queue: str, paused: bool) -> JSONDict:
        action = "pause" if paused else "resume"
        return _as_dict(await self._call("POST", f"/api/queues/{_q(queue)}/{action}"))

    async def paused(self) -> set[str]:
        data = await self._call("GET", "/api/queues")
        rows = data.get("queues") if isinstance(data, dict) else None
        return {str(row.get("name")) for row in rows or [] if isinstance(row, dict) and row.get("paused")}

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
        detail = _detail(data.get("detail")) if isinstance(data, dict) else raw.decode(errors="replace")[:300]
        hint = ""
        if status == 401:
            hint = " (pass --token or set BAGBOT_API_TOKEN to the backend's token)"
        elif status == 404 and not path.startswith("/api/jobs/"):
            hint = f" (is {self.base} the backend's base URL? --url takes http://HOST:PORT, without /api)"
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


def check_base_url(url: str) -> str:
    """The backend's base URL, or a usage error that says how to write it."""
    base = url.strip().rstrip("/")
    parsed = urllib.parse.urlsplit(base)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise OpsError(
            f"--url {url!r} is not an http(s) URL: write the scheme too, e.g. http://{base.split('://')[-1]}",
            ExitCode.USAGE,
        )
    if parsed.path.rstrip("/").endswith("/api"):
        fixed = base[: -len("/api")]
        raise OpsError(f"--url is the backend's base URL, without /api: use {fixed}", ExitCode.USAGE)
    return base


def _detail(detail: Any) -> str:
    """FastAPI's detail on one line: a validation error list becomes `field: message; ...`."""
    if isinstance(detail, list):
        parts = []
        for error in detail:
            if not isinstance(error, dict):
                parts.append(str(error))
                continue
            where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path"))
            parts.append(f"{where}: {error.get('msg', '')}" if where else str(error.get("msg", "")))
        return "; ".join(parts)
    return str(detail)


def _given(body: JSONDict) -> JSONDict:
    """The body without its None fields (the API reads a missing field as "any")."""
    return {key: value for key, value in body.items() if value is not None}


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
