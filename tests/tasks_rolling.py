"""A handler only "new" workers have (BAGBOT_TASKS=tests.tasks_for_tests,tests.tasks_rolling), for the
rolling-deploy tests: old workers (tests.tasks_for_tests alone) do not know it. Also one with its own
retry policy, for the policy-precedence tests."""

from __future__ import annotations

from backend.workers.handlers import current_job, task
from tests.tasks_for_tests import _append, _mark


@task("tests.rolling_new")
async def rolling_new() -> str:
    """Record the run (job, pid, attempt): a test counts how often each job really ran."""
    _mark("start")
    return "new"


@task("tests.policy_five", max_attempts=5)
async def policy_five() -> None:
    """Always fails; records what current_job() says of its max attempts."""
    job = current_job()
    _append(f"{job.job_id} {job.max_attempts} {job.attempt} policy 0")
    raise RuntimeError("fails every time")
