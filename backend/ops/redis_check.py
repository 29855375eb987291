"""`bagbot check`: is this Redis fit to hold jobs?

It must answer, and its `maxmemory-policy` must be `noeviction`: any other
policy lets Redis delete job keys under memory pressure, and a deleted job is
a lost job. The URL is only ever shown redacted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from backend.config import redact_url

SCAN_COUNT = 1000
SCAN_MAX_CALLS = 200  # examine at most ~200k keys: a check must stay cheap on a big shared Redis
MEMORY_WARN_RATIO = 0.9


@dataclass(slots=True)
class CheckReport:
    url: str
    prefix: str
    ok: bool = False
    reachable: bool = False
    version: str = ""
    server: str = "redis"
    maxmemory_policy: str = ""
    used_memory: int = 0
    used_memory_human: str = ""
    maxmemory: int = 0
    keys: int = 0
    keys_complete: bool = True
    nodes: int = 1  # masters examined: every one of a Redis Cluster
    reason: str = ""
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


async def check_redis(url: str, prefix: str, timeout: float = 5.0) -> CheckReport:
    """Connect, read INFO, count our keys with a bounded SCAN; never raises."""
    report = CheckReport(url=redact_url(url), prefix=prefix)
    client: Redis | None = None
    try:
        client = Redis.from_url(
            url, socket_connect_timeout=timeout, socket_timeout=timeout, decode_responses=True
        )
        info: dict[str, Any] = await client.info()
        report.reachable = True
        _read_info(report, info)
        if not report.maxmemory_policy:
            report.maxmemory_policy = await _config_policy(client)
        report.keys, report.keys_complete = await _count_keys(client, prefix)
        if info.get("cluster_enabled"):
            await _check_other_masters(report, client, url, prefix, timeout)
    except (redis_errors.RedisError, OSError) as exc:
        report.reason = _scrub(f"{type(exc).__name__}: {exc}", url)
        return report
    finally:
        if client is not None:
            await client.aclose()
    _judge(report)
    return report


async def _check_other_masters(
    report: CheckReport, client: Redis, url: str, prefix: str, timeout: float
) -> None:
    """On a cluster every master holds jobs: each must be noeviction, and our keys are summed."""
    nodes: dict[str, dict[str, Any]] = await client.execute_command("CLUSTER NODES")  # type: ignore[no-untyped-call]
    masters = [address.split("@")[0] for address, node in nodes.items() if "master" in node["flags"]]
    me = next((address.split("@")[0] for address, node in nodes.items() if "myself" in node["flags"]), "")
    report.nodes = len(masters)
    for address in masters:
        if address == me:
            continue
        node = Redis.from_url(_node_url(url, address), socket_connect_timeout=timeout, socket_timeout=timeout,
                              decode_responses=True)
        try:
            other = CheckReport(url="", prefix=prefix)
            _read_info(other, await node.info())
            policy = other.maxmemory_policy or await _config_policy(node)
            if policy != "noeviction" and report.maxmemory_policy == "noeviction":
                report.maxmemory_policy = f"{policy or 'unknown'} (on cluster node {address})"
            report.used_memory += other.used_memory
            keys, complete = await _count_keys(node, prefix)
            report.keys += keys
            report.keys_complete = report.keys_complete and complete
        finally:
            await node.aclose()


def _node_url(url: str, address: str) -> str:
    """`url` with its host:port replaced by a cluster node's, keeping scheme, user and password."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    auth = parts.netloc.rpartition("@")[0]
    netloc = f"{auth}@{address}" if auth else address
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _read_info(report: CheckReport, info: dict[str, Any]) -> None:
    report.version = str(info.get("redis_version", ""))
    if info.get("valkey_version"):
        report.server, report.version = "valkey", str(info["valkey_version"])
    report.maxmemory_policy = str(info.get("maxmemory_policy", ""))
    report.used_memory = int(info.get("used_memory", 0))
    report.used_memory_human = str(info.get("used_memory_human", ""))
    report.maxmemory = int(info.get("maxmemory", 0))


async def _config_policy(client: Redis) -> str:
    """Fallback for servers whose INFO lacks the policy (CONFIG may be disabled on managed Redis)."""
    try:
        answer = await client.config_get("maxmemory-policy")
    except redis_errors.ResponseError:
        return ""
    return str(answer.get("maxmemory-policy", ""))


async def _count_keys(client: Redis, prefix: str) -> tuple[int, bool]:
    cursor: int = 0
    total = 0
    for _ in range(SCAN_MAX_CALLS):
        cursor, keys = await client.scan(cursor=cursor, match=f"{prefix}:*", count=SCAN_COUNT)
        total += len(keys)
        if cursor == 0:
            return total, True
    return total, False


def _judge(report: CheckReport) -> None:
    if report.maxmemory_policy != "noeviction":
        shown = report.maxmemory_policy or "unknown"
        report.reason = (
            f"maxmemory-policy is {shown}: Redis may evict job keys under memory pressure and jobs would be "
            "lost. Set it to noeviction (Render: maxmemoryPolicy: noeviction; redis.conf: maxmemory-policy "
            "noeviction)"
        )
        return
    if report.maxmemory and report.used_memory >= MEMORY_WARN_RATIO * report.maxmemory:
        share = 100.0 * report.used_memory / report.maxmemory
        report.warnings.append(
            f"memory use is {share:.0f}% of maxmemory: with noeviction, writes fail when it is full "
            "(purge old jobs with `bagbot purge`, or move to a bigger plan)"
        )
    report.ok = True


def _scrub(message: str, url: str) -> str:
    """Error texts from the driver should not carry the password, but make sure."""
    from urllib.parse import urlsplit

    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password:
        message = message.replace(password, "***")
    return message.replace(url, redact_url(url))
