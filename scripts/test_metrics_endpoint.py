#!/usr/bin/env python3
"""Check that a deployed backend exposes the five Redis-backed bagbot metrics.

    python3 scripts/test_metrics_endpoint.py https://bagbot-backend.onrender.com

Fetches BASE_URL + "/api/metrics" and prints `✓ Found metric: NAME` for each
metric that has at least one sample, `✗ Missing metric: NAME` for each that
has none. Exit status: 0 when all five are there, 1 when some are missing,
2 when the endpoint cannot be read. Standard library only, so it runs on any
machine with Python 3.

A metric counts as found only with a sample, not just its # HELP line. The
backend gives every counter and the histogram a series (from 0) for each
handler as soon as one of its jobs was enqueued, and the heartbeat age one
per registered worker: so once a job was enqueued and a worker runs, all five
are there. The guide's check enqueues a `bagbot.fail` job with kwargs
{"times": 1} (one failure, one retry, then success), which also gives them
non-zero values.
"""

from __future__ import annotations

import argparse
import re
import sys
import urllib.error
import urllib.request

METRICS = (
    "bagbot_job_enqueue_total",
    "bagbot_job_run_total",
    "bagbot_job_run_duration_seconds",
    "bagbot_retry_scheduled_total",
    "bagbot_heartbeat_age_seconds",
)
_SAMPLE_SUFFIXES = ("", "_bucket", "_count", "_sum", "_created")
_SAMPLE_NAME = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)")


def metrics_url(base_url: str) -> str:
    base = base_url.strip().rstrip("/")
    return base if base.endswith("/api/metrics") else base + "/api/metrics"


def fetch(url: str, timeout: float) -> str:
    headers = {"Accept": "text/plain", "User-Agent": "bagbot-metrics-check"}
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        charset = response.headers.get_content_charset() or "utf-8"
        body: bytes = response.read()
        return body.decode(charset, errors="replace")


def sampled_names(text: str) -> set[str]:
    """Names of the samples in a Prometheus text exposition (comments skipped)."""
    names: set[str] = set()
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE_NAME.match(line)
        if match:
            names.add(match.group(1))
    return names


def declared_names(text: str) -> set[str]:
    return {parts[2] for line in text.splitlines() if len(parts := line.split()) >= 3 and parts[0] == "#"
            and parts[1] in ("HELP", "TYPE")}


def has_samples(metric: str, samples: set[str]) -> bool:
    return any(metric + suffix in samples for suffix in _SAMPLE_SUFFIXES)


def check(text: str) -> list[str]:
    """Print one line per metric; return the missing ones."""
    samples, declared = sampled_names(text), declared_names(text)
    missing: list[str] = []
    for metric in METRICS:
        if has_samples(metric, samples):
            print(f"✓ Found metric: {metric}")
        else:
            missing.append(metric)
            print(f"✗ Missing metric: {metric}")
            if metric in declared:
                print("    (declared, but no samples yet: metrics only appear after activity)")
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check a bagbot backend's /api/metrics for five metrics.")
    parser.add_argument("base_url", metavar="BASE_URL", help="e.g. https://bagbot-backend.onrender.com")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")
    args = parser.parse_args(argv)
    if not args.base_url.strip().lower().startswith(("http://", "https://")):
        print(f"✗ Cannot reach {args.base_url!r}: BASE_URL must start with http:// or https://")
        return 2
    url = metrics_url(args.base_url)
    try:
        text = fetch(url, args.timeout)
    except urllib.error.HTTPError as exc:
        detail = exc.read(300).decode("utf-8", errors="replace").strip()
        print(f"✗ Cannot read {url}: HTTP {exc.code} {exc.reason}" + (f": {detail}" if detail else ""))
        return 2
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"✗ Cannot reach {url}: {reason}")
        print("    Is the backend running and the URL right (scheme, host, port)?")
        return 2
    missing = check(text)
    if missing:
        print(f"{len(missing)} of {len(METRICS)} metrics missing: {', '.join(missing)}")
        if any(m != "bagbot_heartbeat_age_seconds" for m in missing):
            print('    Enqueue a test job (e.g. bagbot.fail, kwargs {"times": 1}) and let a worker run it.')
        if "bagbot_heartbeat_age_seconds" in missing:
            print("    No worker has registered: check that the worker service is running.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
