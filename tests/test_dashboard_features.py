"""The dashboard as an operator uses it, in Debian's Chromium driven by Playwright, against a real
backend (uvicorn), a real worker process and a real Redis: open a failed job from the list and read
each attempt's traceback, see a job that needed a retry shown as done, find a job by id, page
through a filtered list, bulk-retry failed jobs and watch them run, pause a queue and see nothing
claimed, resume it, and read the charts after a burst of jobs. Screenshots go to artifacts/ (and to
docs/img/ with BAGBOT_SCREENSHOTS_TO_DOCS=1, the README's pictures)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api_server import ROOT, BackendProcess, ServiceProcess, worker_process
from tests.test_dashboard_browser import ARTIFACTS, CHROMIUM_ARGS, chromium_path

TOKEN = "dashboard-features-token"
pytestmark = pytest.mark.slow


class Stack:
    def __init__(self, backend: BackendProcess, worker: ServiceProcess, tmp: Path) -> None:
        self.backend, self.worker, self.tmp = backend, worker, tmp
        self.problems: list[str] = []  # the page's script errors and failed loads
        self.api = httpx.Client(base_url=backend.base_url, headers={"Authorization": f"Bearer {TOKEN}"},
                                timeout=15)

    def enqueue(self, **body: Any) -> dict[str, Any]:
        response = self.api.post("/api/jobs", json=body)
        assert response.status_code == 201, response.text
        job: dict[str, Any] = response.json()
        return job

    def job(self, job_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self.api.get(f"/api/jobs/{job_id}").json()
        return found

    def wait(self, check: Callable[[], bool], what: str, timeout: float = 45.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.1)

    def wait_state(self, job_id: str, *states: str) -> dict[str, Any]:
        self.wait(lambda: self.job(job_id)["state"] in states, f"{job_id} to be {states}")
        return self.job(job_id)


@pytest.fixture
def stack(tmp_path: Path, redis_url: str, prefix: str, delete_prefix_after: None) -> Iterator[Stack]:
    env = {"JOB_STORE": "redis", "REDIS_URL": redis_url, "BAGBOT_PREFIX": prefix, "BAGBOT_API_TOKEN": TOKEN,
           "BAGBOT_HEARTBEAT_SECONDS": "0.5", "BAGBOT_LEASE_SECONDS": "10"}
    backend = BackendProcess(tmp_path, env)
    worker_env = {**env, "BAGBOT_CONCURRENCY": "4", "BAGBOT_TASKS": "tests.tasks_dashboard"}
    worker = worker_process(tmp_path, worker_env)
    try:
        backend.wait_ready()
        worker.wait_for_log("worker_registered")
        built = Stack(backend, worker, tmp_path)
        yield built
        built.api.close()
    finally:
        worker.stop()
        backend.stop()


@pytest.fixture
def page(stack: Stack) -> Iterator[Any]:
    executable = chromium_path()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport={"width": 1400, "height": 1000})
            problems = stack.problems
            tab.on("pageerror", lambda exc: problems.append(str(exc)))
            tab.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
            tab.on("dialog", lambda dialog: dialog.accept())  # the bulk actions ask before they act
            tab.goto(stack.backend.base_url + "/")
            tab.evaluate(f"localStorage.setItem('bagbot.apiToken', {TOKEN!r})")
            yield tab
            assert problems == [], problems  # a 404 a test provokes on purpose it takes off itself
        finally:
            browser.close()


def shoot(tab: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    tab.screenshot(path=str(ARTIFACTS / name), full_page=True)
    if os.environ.get("BAGBOT_SCREENSHOTS_TO_DOCS"):
        (ROOT / "docs" / "img").mkdir(parents=True, exist_ok=True)
        shutil.copy(ARTIFACTS / name, ROOT / "docs" / "img" / name)


def test_a_failed_job_opens_from_the_list_with_each_attempts_traceback(stack: Stack, page: Any) -> None:
    from playwright.sync_api import expect

    failing = stack.enqueue(name="bagbot.fail", args=[], kwargs={"times": 5}, max_attempts=2,
                            queue="default")
    recovered = stack.enqueue(name="bagbot.fail", kwargs={"times": 1}, max_attempts=3)
    stack.wait_state(failing["id"], "failed")
    stack.wait_state(recovered["id"], "done")
    page.goto(stack.backend.base_url + "/")

    # The job that needed a retry reads as done, not as a failure.
    row = page.get_by_test_id(f"job-{recovered['id']}")
    expect(row).to_have_attribute("data-state", "done", timeout=15_000)
    expect(row.locator("td.error")).to_have_text("done after 1 failed attempt")
    assert "earlier" in (row.locator("td.error").get_attribute("class") or "")
    assert page.get_by_test_id(f"failure-{recovered['id']}").count() == 0

    # Open the failed one from the failures list: every attempt's error and traceback.
    page.get_by_test_id(f"failure-{failing['id']}").get_by_test_id("open").click()
    page.wait_for_url(f"**/jobs/{failing['id']}?queue=default")
    expect(page.get_by_test_id("detail-state")).to_have_text("failed", timeout=15_000)
    expect(page.get_by_test_id("detail-name")).to_have_text("bagbot.fail")
    expect(page.get_by_test_id("detail-kwargs")).to_contain_text('"times": 5')
    expect(page.get_by_test_id("detail-attempts")).to_have_text("2 of 2")
    attempts = page.get_by_test_id("attempt")
    expect(attempts).to_have_count(2)
    expect(attempts.nth(0).get_by_test_id("attempt-error")).to_have_text(
        "DiagnosticFailure: bagbot.fail: attempt 1 of 5 planned failures")
    expect(attempts.nth(1).get_by_test_id("traceback")).to_contain_text("Traceback (most recent call last)")
    expect(attempts.nth(1).get_by_test_id("traceback")).to_contain_text("diagnostics.py")
    shoot(page, "job-detail.png")
    # A refresh that finds the job unchanged leaves the page alone (a traceback being read stays put).
    page.evaluate("window.shownTraceback = document.querySelector('[data-testid=traceback]')")
    before = page.get_by_test_id("updated").text_content()
    expect(page.get_by_test_id("updated")).not_to_have_text(before or "", timeout=10_000)
    assert page.evaluate("document.querySelector('[data-testid=traceback]') === window.shownTraceback")

    # Retry from the detail page: it runs again and its history grows to four attempts' errors.
    page.get_by_test_id(f"retry-{failing['id']}").click()
    expect(page.get_by_test_id("flash")).to_contain_text(f"retry {failing['id']}: ok", timeout=10_000)
    expect(page.get_by_test_id("attempt")).to_have_count(4, timeout=30_000)
    expect(page.get_by_test_id("detail-state")).to_have_text("failed", timeout=30_000)

    # The recovered job's own page: done, with its one earlier error, not in red.
    page.goto(stack.backend.base_url + f"/jobs/{recovered['id']}")
    expect(page.get_by_test_id("detail-state")).to_have_text("done", timeout=15_000)
    expect(page.get_by_test_id("recovered")).to_contain_text("done after 1 failed attempt")
    expect(page.get_by_test_id("detail-result")).to_contain_text('"failed_before": 1')
    expect(page.locator(".attempt.recovered")).to_have_count(1)


def test_find_a_job_by_id_and_page_through_a_filtered_list(stack: Stack, page: Any) -> None:
    from playwright.sync_api import expect

    noops = [stack.enqueue(name="bagbot.noop", args=[i])["id"] for i in range(23)]
    echo = stack.enqueue(name="bagbot.echo", args=["find me"])
    for job_id in [*noops, echo["id"]]:
        stack.wait_state(job_id, "done")
    base = stack.backend.base_url

    # Find by id: the job's page opens; an unknown id says so.
    page.goto(base + "/")
    page.get_by_test_id("lookup-id").fill(echo["id"])
    page.get_by_test_id("lookup-id").press("Enter")
    page.wait_for_url(f"**/jobs/{echo['id']}?queue=default")
    expect(page.get_by_test_id("detail-result")).to_contain_text("find me", timeout=15_000)
    page.get_by_test_id("lookup-id").fill("no-such-job-42")
    page.get_by_test_id("lookup-id").press("Enter")
    expect(page.get_by_test_id("flash")).to_have_text("no job no-such-job-42", timeout=10_000)
    page.goto(base + "/jobs/no-such-job-42")
    expect(page.get_by_test_id("not-found")).to_contain_text("no job no-such-job-42", timeout=10_000)
    assert stack.problems and all("404" in problem for problem in stack.problems)  # the two lookups
    stack.problems.clear()

    # Filter by name, 10 per page, newest first, through every page and back.
    page.goto(base + "/")
    page.get_by_test_id("paused").check()  # hold the 2 s refresh: the test turns pages itself
    page.get_by_test_id("name-filter").fill("bagbot.noop")
    page.get_by_test_id("name-filter").press("Enter")
    page.get_by_test_id("page-size").select_option("10")
    expect(page).to_have_url(base + "/?name=bagbot.noop", timeout=10_000)
    rows = page.locator("#jobs tr.job-row")
    seen: list[list[str]] = []
    for number, count in ((1, 10), (2, 10), (3, 3)):
        expect(page.get_by_test_id("page-number")).to_have_text(f"page {number}", timeout=10_000)
        expect(rows).to_have_count(count, timeout=10_000)
        seen.append([rows.nth(i).get_attribute("data-job-id") or "" for i in range(count)])
        if number < 3:
            page.get_by_test_id("next-page").click()
    expect(page.get_by_test_id("next-page")).to_be_disabled()
    assert [job_id for ids in seen for job_id in ids] == list(reversed(noops))  # newest first, no gap
    page.get_by_test_id("prev-page").click()
    expect(page.get_by_test_id("page-number")).to_have_text("page 2")
    expect(rows.first).to_have_attribute("data-job-id", seen[1][0])
    page.get_by_test_id("first-page").click()
    expect(rows.first).to_have_attribute("data-job-id", seen[0][0])
    # The filter comes back from the address.
    page.goto(base + "/?name=bagbot.echo")
    expect(page.locator("#jobs tr.job-row")).to_have_count(1, timeout=10_000)
    expect(page.get_by_test_id("name-filter")).to_have_value("bagbot.echo")


def test_bulk_retry_pause_resume_and_the_charts_after_a_burst(stack: Stack, page: Any) -> None:
    from playwright.sync_api import expect

    flag = stack.tmp / "flag"
    failed = [stack.enqueue(name="dash.until_flag", kwargs={"flag": str(flag)}, max_attempts=1)["id"]
              for _ in range(5)]
    for job_id in failed:
        stack.wait_state(job_id, "failed")
    base = stack.backend.base_url

    # Bulk retry of the filtered failed jobs: they run again, and now succeed.
    flag.write_text("go")
    page.goto(base + "/?state=failed&name=dash.until_flag")
    expect(page.locator("#jobs tr.job-row")).to_have_count(5, timeout=15_000)
    page.get_by_test_id("bulk-retry").click()
    expect(page.get_by_test_id("flash")).to_contain_text("retry: 5 of 5 failed jobs named dash.until_flag",
                                                         timeout=10_000)
    for job_id in failed:
        done = stack.wait_state(job_id, "done")
        assert [e["type"] for e in done["errors"]] == ["RuntimeError"]
    expect(page.locator("#jobs tr.job-row")).to_have_count(0, timeout=15_000)

    # Pause: enqueues are accepted but nothing is claimed; resume: it runs.
    page.goto(base + "/")
    page.get_by_test_id("pause-default").click()
    expect(page.get_by_test_id("paused-default")).to_have_text("paused", timeout=10_000)
    assert stack.api.get("/api/queues").json()["queues"][0]["paused"] is True
    held = stack.enqueue(name="bagbot.noop")
    page.get_by_test_id("state-filter").select_option("enqueued")
    held_row = page.get_by_test_id(f"job-{held['id']}")
    expect(held_row).to_have_attribute("data-state", "enqueued", timeout=10_000)
    time.sleep(3)  # an absence: a worker that claimed would have done so within a heartbeat or two
    assert stack.job(held["id"])["state"] == "enqueued"
    shoot(page, "paused.png")
    page.get_by_test_id("resume-default").click()
    expect(page.get_by_test_id("paused-default")).to_have_text("on", timeout=10_000)
    stack.wait_state(held["id"], "done")

    # A queue's rate limit shows beside it, and goes when cleared.
    assert stack.api.put("/api/queues/default/rate", json={"rate": "50/s"}).status_code == 200
    expect(page.get_by_test_id("rate-default")).to_have_text("50/s", timeout=10_000)
    assert stack.api.delete("/api/queues/default/rate").status_code == 200
    expect(page.get_by_test_id("rate-default")).to_have_text("–", timeout=10_000)

    # A burst of jobs, then the charts; a long job shows as running on its worker, with a link.
    burst = [stack.enqueue(name="bagbot.sleep", kwargs={"seconds": 0.05 * (i % 7)})["id"] for i in range(40)]
    for job_id in burst:
        stack.wait_state(job_id, "done")
    stack.enqueue(name="bagbot.fail", kwargs={"times": 9}, max_attempts=1)
    long = stack.enqueue(name="bagbot.sleep", kwargs={"seconds": 30})
    stack.wait_state(long["id"], "running")
    page.goto(base + "/")
    card = page.get_by_test_id("chart-default")
    expect(card).to_be_visible(timeout=15_000)
    runs = int(card.get_attribute("data-runs") or 0)
    assert runs >= 5 + 5 + 1 + 40  # the failed runs, their retries, the held job and the burst
    assert card.get_by_test_id("runs-chart").locator("g.bar rect").count() >= 1
    assert card.get_by_test_id("duration-chart").locator("polyline, circle").count() >= 1
    page.get_by_test_id("history-window").select_option("180")
    expect(card.locator("h3")).to_contain_text("in the last 3 hours", timeout=10_000)
    assert card.get_by_test_id("runs-chart").locator("g.bar rect").count() >= 1
    worker_row = page.locator("#workers tr[data-worker]")
    expect(worker_row).to_have_count(1)
    expect(worker_row.get_by_test_id(f"running-{long['id']}")).to_be_visible(timeout=15_000)
    expect(worker_row.get_by_test_id("running")).to_have_text("1 / 4")
    shoot(page, "dashboard.png")
    worker_row.get_by_test_id(f"running-{long['id']}").click()
    expect(page.get_by_test_id("detail-state")).to_have_text("running", timeout=15_000)
    page.get_by_test_id(f"cancel-{long['id']}").click()
    expect(page.get_by_test_id("detail-state")).to_have_text("cancelled", timeout=30_000)
