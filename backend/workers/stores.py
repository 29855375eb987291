"""Picks the job store that the settings name: the only module that names backends."""

from __future__ import annotations

from backend.config import Settings
from backend.workers.job_store import JobStore


def create_job_store(settings: Settings) -> JobStore:
    """Build the store that `settings.job_store` names (`redis`, else the in-process `memory`)."""
    if settings.job_store == "redis":
        from backend.workers.redis_job_store import RedisJobStore

        return RedisJobStore.from_url(
            settings.redis_url,
            prefix=settings.prefix,
            retention_seconds=settings.retention_seconds,
            cluster=True if settings.redis_cluster else None,
        )
    from backend.workers.memory_job_store import MemoryJobStore

    return MemoryJobStore(retention_seconds=settings.retention_seconds)


def private_to_one_process(settings: Settings) -> bool:
    """Whether the store `settings` name is visible only inside the process that opens it (memory):
    a separate worker or CLI process could then never see the backend's jobs."""
    return settings.job_store != "redis"
