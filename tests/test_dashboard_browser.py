"""The dashboard in a real headless Chromium (Debian's `chromium` package), driven by Playwright.

The backend runs under uvicorn in a subprocess with the memory store and its
embedded worker (concurrency 1, so a long job can hold the only slot). The
test loads the page, sees a job enqueued through the API appear, retries a
failed job from the page (first without the token: refused; then with it),
watches the job leave the failures table, and saves a screenshot to
artifacts/dashboard.png.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api_server import ROOT, BackendProcess
from tests.redis_server import in_ci

TOKEN = "browser-test-token-42"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = ROOT / "artifacts"

pytestmark = pytest.mark.slow


def chromium_path() -> str:
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if found is None:
        if in_ci():
            pytest.fail("CI needs Debian's chromium for the dashboard test (apt-get install chromium)")
        pytest.skip("chromium not installed (apt-get install chromium)")
    return found


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[BackendProcess]:
    env = {
        "JOB_STORE": "memory",
        "BAGBOT_API_TOKEN": TOKEN,
        "BAGBOT_CONCURRENCY": "1",
        "BAGBOT_HEARTBEAT_SECONDS": "0.5",
        "BAGBOT_LEASE_SECONDS": "10",
    }
    server = BackendProcess(tmp_path, env)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def wait_state(api: httpx.Client, job_id: str, state: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = api.get(f"/api/jobs/{job_id}").json()
        if job["state"] == state:
            return job
        assert time.monotonic() < deadline, f"job {job_id} stuck in {job['state']}"
        time.sleep(0.05)


def test_dashboard_shows_jobs_and_retries_a_failed_one(backend: BackendProcess) -> None:
    executable = chromium_path()
    from playwright.sync_api import expect, sync_playwright

    auth = {"Authorization": f"Bearer {TOKEN}"}
    with (
        httpx.Client(base_url=backend.base_url, headers=auth, timeout=10) as api,
        sync_playwright() as pw,
    ):
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(backend.base_url + "/")
            expect(page.get_by_test_id("status")).to_have_text("live", timeout=15_000)
            expect(page.locator("#workers tr[data-worker]")).to_have_count(1, timeout=15_000)
            expect(page.locator("#workers [data-testid=heartbeat-age]")).to_contain_text(" s")

            # A job enqueued through the API appears, and runs.
            echo = api.post("/api/jobs", json={"name": "bagbot.echo", "args": ["from the api"]}).json()
            row = page.get_by_test_id(f"job-{echo['id']}")
            expect(row).to_be_visible(timeout=15_000)
            expect(row).to_have_attribute("data-state", "done", timeout=15_000)
            expect(page.locator("#queues [data-testid=queue-default] [data-state=done]")).to_have_text("1")

            # A failed job shows in the failures table with its error.
            failing = api.post(
                "/api/jobs", json={"name": "bagbot.fail", "kwargs": {"times": 1000}, "max_attempts": 1}
            ).json()
            wait_state(api, failing["id"], "failed")
            failure = page.get_by_test_id(f"failure-{failing['id']}")
            expect(failure).to_be_visible(timeout=15_000)
            expect(failure.get_by_test_id("error")).to_contain_text("DiagnosticFailure")

            # Hold the worker's only slot, so the retried job stays visibly enqueued for a while.
            blocker = api.post("/api/jobs", json={"name": "bagbot.sleep", "kwargs": {"seconds": 8}}).json()
            wait_state(api, blocker["id"], "running")

            # Without the token the page is refused and says why.
            failure.get_by_test_id(f"retry-{failing['id']}").click()
            expect(page.get_by_test_id("flash")).to_contain_text("401", timeout=10_000)
            assert api.get(f"/api/jobs/{failing['id']}").json()["state"] == "failed"

            # With the token (kept in localStorage), the retry goes through and the page shows it.
            page.get_by_test_id("token").fill(TOKEN)
            page.get_by_test_id("token").press("Enter")
            page.get_by_test_id("token").blur()
            expect(page.get_by_test_id("flash")).to_contain_text("token saved", timeout=5_000)
            failure.get_by_test_id(f"retry-{failing['id']}").click()
            expect(page.get_by_test_id("flash")).to_contain_text(f"retry {failing['id']}: ok", timeout=10_000)
            expect(page.get_by_test_id(f"failure-{failing['id']}")).to_have_count(0, timeout=10_000)
            retried = page.get_by_test_id(f"job-{failing['id']}")
            expect(retried).to_have_attribute("data-state", "enqueued", timeout=10_000)
            assert page.evaluate("localStorage.getItem('bagbot.apiToken')") == TOKEN

            # The enqueue form works with the token too.
            form = page.get_by_test_id("enqueue-form")
            form.locator("input[name=name]").fill("bagbot.echo")
            form.locator("input[name=args]").fill('["from the form"]')
            page.get_by_test_id("enqueue-submit").click()
            expect(page.get_by_test_id("flash")).to_contain_text("enqueued bagbot.echo", timeout=10_000)
            from_form = [
                j
                for j in api.get("/api/jobs", params={"name": "bagbot.echo"}).json()["jobs"]
                if j["args"] == ["from the form"]
            ]
            assert len(from_form) == 1

            # Once the blocker is done the retried job runs again (and fails again: times=1000).
            expect(page.get_by_test_id(f"failure-{failing['id']}")).to_be_visible(timeout=30_000)
            expect(page.get_by_test_id(f"job-{from_form[0]['id']}")).to_have_attribute(
                "data-state", "done", timeout=30_000
            )

            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            assert errors == [], errors
        finally:
            browser.close()
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
