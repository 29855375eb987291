"""All configuration in one object, read from the environment once at start-up.

A bad value is a start-up error that names the variable, so a typo in
Render's dashboard shows in the deploy log instead of as odd behaviour later.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the variable."""


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***, safe for logs and errors."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:  # a non-numeric port: still redact, never crash while reporting it
        port = None
    if port:
        host = f"{host}:{port}"
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


@dataclass(frozen=True, slots=True)
class Settings:
    job_store: str = "memory"
    redis_url: str = "redis://localhost:6379/0"
    prefix: str = "bagbot"
    queues: tuple[str, ...] = ("default",)
    concurrency: int = 10
    tasks: tuple[str, ...] = ()
    heartbeat_seconds: float = 5.0
    lease_seconds: float = 30.0
    shutdown_grace_seconds: float = 25.0
    job_timeout_seconds: float = 300.0
    retention_seconds: float = 7 * 24 * 3600.0
    # a job whose handler its worker lacks is handed back until no live worker has had it this long
    unknown_handler_grace_seconds: float = 300.0
    api_token: str | None = None
    port: int = 8000
    host: str = "0.0.0.0"
    max_body_bytes: int = 1_048_576
    max_event_streams: int = 200
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 30.0
    log_level: str = "INFO"
    redis_cluster: bool = False
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every setting from `env` (default: os.environ)."""
        env = os.environ if env is None else env
        reader = _Reader(env)
        job_store = reader.get("JOB_STORE", "memory", _choice("memory", "redis"))
        redis_url = reader.get("REDIS_URL", "redis://localhost:6379/0", _redis_url)
        heartbeat = reader.get("BAGBOT_HEARTBEAT_SECONDS", 5.0, _positive_float)
        lease = reader.get("BAGBOT_LEASE_SECONDS", 30.0, _positive_float)
        if lease <= heartbeat:
            raise ConfigError(
                f"BAGBOT_LEASE_SECONDS ({lease}) must be greater than BAGBOT_HEARTBEAT_SECONDS ({heartbeat}),"
                " or leases expire between heartbeats"
            )
        grace = reader.get("BAGBOT_UNKNOWN_HANDLER_GRACE_SECONDS", 300.0, _positive_float)
        if grace <= heartbeat:
            raise ConfigError(
                f"BAGBOT_UNKNOWN_HANDLER_GRACE_SECONDS ({grace}) must be greater than"
                f" BAGBOT_HEARTBEAT_SECONDS"
                f" ({heartbeat}): workers advertise their handlers with each heartbeat"
            )
        return cls(
            job_store=job_store,
            redis_url=redis_url,
            prefix=reader.get("BAGBOT_PREFIX", "bagbot", _prefix),
            queues=reader.get("BAGBOT_QUEUES", ("default",), _queue_list),
            concurrency=reader.get("BAGBOT_CONCURRENCY", 10, _int_range(1, 10_000)),
            tasks=reader.get("BAGBOT_TASKS", (), _module_list),
            heartbeat_seconds=heartbeat,
            lease_seconds=lease,
            shutdown_grace_seconds=reader.get("BAGBOT_SHUTDOWN_GRACE_SECONDS", 25.0, _non_negative_float),
            job_timeout_seconds=reader.get("BAGBOT_JOB_TIMEOUT_SECONDS", 300.0, _positive_float),
            retention_seconds=reader.get("BAGBOT_RETENTION_SECONDS", 7 * 24 * 3600.0, _positive_float),
            unknown_handler_grace_seconds=grace,
            api_token=reader.get("BAGBOT_API_TOKEN", None, _token),
            port=reader.get("PORT", 8000, _int_range(1, 65535)),
            host=reader.get("BAGBOT_HOST", "0.0.0.0", str),
            max_body_bytes=reader.get("BAGBOT_MAX_BODY_BYTES", 1_048_576, _int_range(1024, 1 << 30)),
            max_event_streams=reader.get("BAGBOT_MAX_EVENT_STREAMS", 200, _int_range(1, 100_000)),
            header_timeout_seconds=reader.get("BAGBOT_HEADER_TIMEOUT_SECONDS", 10.0, _positive_float),
            body_timeout_seconds=reader.get("BAGBOT_BODY_TIMEOUT_SECONDS", 30.0, _positive_float),
            log_level=reader.get("BAGBOT_LOG_LEVEL", "INFO", _choice("DEBUG", "INFO", "WARNING", "ERROR")),
            redis_cluster=reader.get("BAGBOT_REDIS_CLUSTER", False, _bool),
        )

    @property
    def safe_redis_url(self) -> str:
        return redact_url(self.redis_url)


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def get(self, name: str, default: T, parse: Callable[[str], T]) -> T:
        raw = self.env.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            return parse(raw.strip())
        except (ValueError, TypeError) as exc:
            shown = redact_url(raw) if name == "REDIS_URL" else raw
            if name == "BAGBOT_API_TOKEN":
                shown = "***"
            raise ConfigError(f"{name}={shown!r} is not valid: {exc}") from None


def _choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.lower() if options[0].islower() else raw.upper()
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return value

    return parse


def _redis_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError("expected a redis://, rediss:// or unix:// URL")
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError("the URL has no host")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError("the port is not a number") from None
    return raw


def _prefix(raw: str) -> str:
    if not all(c.isalnum() or c in "_-." for c in raw) or len(raw) > 64:
        raise ValueError("use up to 64 of A-Z a-z 0-9 _ - .")
    return raw


def _queue_list(raw: str) -> tuple[str, ...]:
    from backend.workers.rules import InvalidJobError, validate_queue

    names = tuple(part.strip() for part in raw.split(",") if part.strip())
    if not names:
        raise ValueError("name at least one queue")
    try:
        return tuple(validate_queue(name) for name in names)
    except InvalidJobError as exc:
        raise ValueError(str(exc)) from None


def _module_list(raw: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in raw.split(",") if part.strip())
    for name in names:
        if not all(piece.isidentifier() for piece in name.split(".")):
            raise ValueError(f"{name!r} is not a module path")
    return names


def _int_range(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw)
        if not low <= value <= high:
            raise ValueError(f"expected an integer from {low} to {high}")
        return value

    return parse


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError("expected a positive number of seconds")
    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if not value >= 0 or value == float("inf"):
        raise ValueError("expected a number of seconds, 0 or more")
    return value


def _token(raw: str) -> str:
    if len(raw) < 8:
        raise ValueError("use at least 8 characters")
    return raw


def _bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")
