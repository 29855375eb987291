"""The one place where redis-py's errors become the contract's errors.

Everything the Redis store (and its reset watch) sends goes through `mapped_errors`, so the
worker, the API and the CLI only ever see `StoreUnavailableError` or `StoreFullError`.
"""

from __future__ import annotations

import re
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


# Error codes of a server that is alive but cannot serve this call now, the same as an outage: the
# call is tried again later and changes nothing meanwhile. BUSY: another client's script is running;
# LOADING: the data set is being loaded; READONLY: a replica (a failover demoted the node); MASTERDOWN,
# NOREPLICAS: a replica cut off from its master, a master without enough replicas; CLUSTERDOWN,
# TRYAGAIN: a cluster that cannot serve the slot yet. Some arrive as plain ResponseErrors (BUSY,
# NOREPLICAS), some wrapped in a script's error text ("Error running script ... -READONLY ...").
TRANSIENT_CODES = ("BUSY", "LOADING", "READONLY", "MASTERDOWN", "NOREPLICAS", "CLUSTERDOWN", "TRYAGAIN")
_TRANSIENT = re.compile(r"(^|[\s:-])(" + "|".join(TRANSIENT_CODES) + r")\b")


def is_transient(exc: redis_errors.ResponseError) -> bool:
    """Whether an error reply means "not now" (see TRANSIENT_CODES) rather than a bad call."""
    message = str(exc)
    code = message.split(" ", 1)[0]
    if code in TRANSIENT_CODES:
        return True
    return message.startswith("Error running script") and _TRANSIENT.search(message) is not None


# Inside a script, Redis 6.2 reports a refused write as the script's error, the OOM code in the middle:
# "Error running script (call to f_…): @user_script:1: @user_script: 1: -OOM command not allowed …".
_SCRIPT_OOM = re.compile(r"(^|[\s:-])OOM command not allowed")


def is_out_of_memory(exc: redis_errors.ResponseError) -> bool:
    """Whether Redis refused a write because maxmemory is reached, on every supported server:
    redis-py's OutOfMemoryError (the "OOM" code stripped) for a plain command or a script's own
    refusal on Redis 7+ and Valkey, and the script error text of Redis 6.2."""
    if isinstance(exc, redis_errors.OutOfMemoryError):
        return True
    message = str(exc)
    return message.startswith("OOM") or _SCRIPT_OOM.search(message) is not None


@contextmanager
def mapped_errors(where: str) -> Iterator[None]:
    """Re-raise redis-py's connection, timeout, "not now" (TRANSIENT_CODES) and out-of-memory
    errors as the contract's."""
    try:
        yield
    except UNAVAILABLE as exc:
        raise StoreUnavailableError(f"Redis at {where} is unavailable: {exc}") from exc
    except redis_errors.ResponseError as exc:
        if is_transient(exc):
            raise StoreUnavailableError(f"Redis at {where} cannot serve the call now: {exc}") from exc
        if is_out_of_memory(exc):
            raise StoreFullError(
                f"Redis at {where} is out of memory (maxmemory reached with noeviction): "
                "the job was not stored"
            ) from exc
        raise
