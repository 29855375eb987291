"""Making the Redis store's client: a standalone server or a Redis Cluster, asked of the server."""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

MAX_BLOCK_SECONDS = 5.0  # BLPOP stays well under the client's socket timeout


def cluster_retry() -> Retry:
    """Fail fast on a cluster: redis-py's default (10 tries, backoff up to 1 s) spent seconds on a dead
    node and on the slot-map refresh it started, which delayed calls to healthy nodes too: lease
    extensions ran late. Every caller of the store already retries outages with its own backoff."""
    return Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.2), 3)


def connect(url: str, cluster: bool | None = None) -> aioredis.Redis | RedisCluster:
    """A client for `url`; `cluster=None` asks the server whether it is a Redis Cluster node."""
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": 5,
        "socket_timeout": MAX_BLOCK_SECONDS + 5,
    }
    if cluster is None:
        cluster = is_cluster(url)
    if cluster:
        return RedisCluster.from_url(url, retry=cluster_retry(), **options)
    return aioredis.Redis.from_url(url, health_check_interval=15, **options)


def is_cluster(url: str) -> bool:
    """Whether the server at `url` runs in cluster mode (False when it cannot be asked now)."""
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2) as probe:
            return bool(probe.info("cluster").get("cluster_enabled"))
    except (redis_errors.RedisError, OSError):
        return False
