"""The README's pictures of the dashboard: run `.venv/bin/python scripts/dashboard_screenshots.py`
(needs Debian's chromium and the `playwright` package; takes about `--minutes` minutes).

It starts the backend (uvicorn, the memory store and its embedded worker on two queues), feeds it a
mixed load for a few minutes (short and slower jobs, some that need a retry, a few that fail), so the
charts have several minutes to show, then saves docs/img/dashboard.png and docs/img/job-detail.png
(a failed job's page with each attempt's traceback). Everything shown is what really ran.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_backend(port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BAGBOT_", "JOB_STORE", "REDIS_URL"))}
    env.update({"JOB_STORE": "memory", "BAGBOT_QUEUES": "default,emails", "BAGBOT_CONCURRENCY": "6",
                "BAGBOT_HEARTBEAT_SECONDS": "1"})
    args = [sys.executable, "-m", "uvicorn", "backend.api.app:app", "--port", str(port),
            "--log-level", "warning"]
    proc = subprocess.Popen(args, cwd=ROOT, env=env)
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2):
                return proc
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise SystemExit("the backend did not start") from None
            time.sleep(0.2)


def feed(api: httpx.Client, minutes: float, rng: random.Random) -> str:
    """A few jobs every couple of seconds; returns the id of a job that failed for good."""
    failing = ""
    end = time.monotonic() + minutes * 60
    while time.monotonic() < end:
        rate = 2 + int(4 * (1 + rng.random()))
        for _ in range(rate):
            seconds = round(rng.choice([0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 1.0]) * rng.uniform(0.5, 1.5), 3)
            api.post("/api/jobs", json={"name": "bagbot.sleep", "kwargs": {"seconds": seconds}})
        api.post("/api/jobs", json={"name": "bagbot.echo", "args": ["welcome", rng.randint(1, 999)],
                                    "queue": "emails"})
        if rng.random() < 0.25:
            api.post("/api/jobs", json={"name": "bagbot.fail", "kwargs": {"times": 1}, "max_attempts": 3,
                                        "queue": "emails"})
        if rng.random() < 0.08 or not failing:
            body = {"name": "bagbot.fail", "kwargs": {"times": 9}, "max_attempts": 3}
            job = api.post("/api/jobs", json=body)
            failing = failing or str(job.json()["id"])
        time.sleep(2)
    return failing


def wait_state(api: httpx.Client, job_id: str, state: str) -> None:
    deadline = time.monotonic() + 120
    while api.get(f"/api/jobs/{job_id}").json()["state"] != state:
        if time.monotonic() > deadline:
            raise SystemExit(f"job {job_id} never reached {state}")
        time.sleep(0.5)


def shoot(base: str, failing: str, out: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        args = ["--headless", "--no-sandbox", "--disable-gpu"]
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            page: Any = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(base + "/")
            page.get_by_test_id("page-size").select_option("10")
            expect(page.locator("#jobs tr.job-row")).to_have_count(10, timeout=30_000)
            page.wait_for_selector("[data-testid=chart-default] g.bar", timeout=30_000)
            page.wait_for_selector("#workers [data-testid^=running-]", timeout=30_000)
            page.screenshot(path=str(out / "dashboard.png"), full_page=True)
            page.goto(f"{base}/jobs/{failing}?queue=default")
            page.wait_for_selector("[data-testid=traceback]", timeout=30_000)
            page.screenshot(path=str(out / "job-detail.png"), full_page=True)
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=6.0, help="feed jobs this long, then shoot")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    options = parser.parse_args()
    options.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = start_backend(port)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=15) as api:
            failing = feed(api, options.minutes, random.Random(16))
            wait_state(api, failing, "failed")
            api.post("/api/jobs", json={"name": "bagbot.sleep", "kwargs": {"seconds": 60}})
            shoot(base, failing, options.out)
    finally:
        proc.kill()  # the memory store keeps nothing worth a graceful stop
        proc.wait(30)
    print(f"saved {options.out / 'dashboard.png'} and {options.out / 'job-detail.png'}")


if __name__ == "__main__":
    main()
