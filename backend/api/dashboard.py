"""GET /: one self-contained page (inline CSS and JS, no build step) that calls the JSON API."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["dashboard"])


@lru_cache(maxsize=1)
def dashboard_html() -> str:
    return resources.files("backend.api").joinpath("static/dashboard.html").read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def dashboard() -> HTMLResponse:
    """The live dashboard: queues, workers, recent jobs and failures, retry/cancel, enqueue."""
    # The page only reads the API, but forbid framing and inline content from elsewhere anyway.
    csp = "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; frame-ancestors 'none'"
    headers = {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-cache",
    }
    return HTMLResponse(dashboard_html(), headers=headers)
