"""Structured log lines: `event=job_done job=... duration=0.012`, one line per event.

Plain `key=value` text is what Render's log view and `grep` read best; values with
spaces, quotes or `=` are JSON-quoted so a line always splits back into its fields.
"""

from __future__ import annotations

import json
import re

_NEEDS_QUOTES = re.compile(r'[\s"=]')


def fmt(event: str, **fields: object) -> str:
    """One structured log line: `event=job_done job=... duration=0.012`."""
    parts = [f"event={event}"]
    for key, value in fields.items():
        if value is None:
            continue
        text = f"{value:.3f}" if isinstance(value, float) else str(value)
        if text == "" or _NEEDS_QUOTES.search(text):
            text = json.dumps(text[:500], ensure_ascii=False)
        parts.append(f"{key}={text}")
    return " ".join(parts)
