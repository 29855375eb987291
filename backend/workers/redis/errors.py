"""The one place where redis-py's errors become the contract's errors.

Everything the Redis store (and its reset watch) sends goes through `mapped_errors`, so the
worker, the API and the CLI only ever see `StoreUnavailableError` or `StoreFullError`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from redis import exceptions as redis_errors

from backend.workers.job_store import StoreFullError, StoreUnavailableError

# Errors that mean "not reachable now": the connection, and a cluster (or a failover) that cannot
# serve the slot yet (CLUSTERDOWN, TRYAGAIN, no node for the slot, a write reaching a replica).
UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    OSError,
    redis_errors.ClusterError,
    redis_errors.TryAgainError,
    redis_errors.ReadOnlyError,
    redis_errors.SlotNotCoveredError,
)


@contextmanager
def mapped_errors(where: str) -> Iterator[None]:
    """Re-raise redis-py's connection, timeout and out-of-memory errors as the contract's."""
    try:
        yield
    except UNAVAILABLE as exc:
        raise StoreUnavailableError(f"Redis at {where} is unavailable: {exc}") from exc
    except redis_errors.ResponseError as exc:
        # redis-py raises OutOfMemoryError with the "OOM" code stripped from the message
        if isinstance(exc, redis_errors.OutOfMemoryError) or str(exc).startswith("OOM"):
            raise StoreFullError(
                f"Redis at {where} is out of memory (maxmemory reached with noeviction): "
                "the job was not stored"
            ) from exc
        raise
