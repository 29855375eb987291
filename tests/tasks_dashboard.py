"""Handlers for the dashboard's browser test (BAGBOT_TASKS=tests.tasks_dashboard)."""

from __future__ import annotations

from pathlib import Path

from backend.workers.handlers import task


@task("dash.until_flag")
async def until_flag(flag: str) -> str:
    """Fails until the file `flag` exists: jobs that fail now and succeed when retried later."""
    if not Path(flag).exists():
        raise RuntimeError(f"the flag file {flag} is not there yet")
    return "flag found"
