"""The dashboard: one page (GET /, and GET /jobs/{id} opened on that job) with its own scripts and
style sheet, served from `static/` (no build step, no CDN: it works offline) and calling the JSON API."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse, Response

from backend.workers.rules import validate_job_id

router = APIRouter(tags=["dashboard"])

# The files the page loads (GET /ui/<name>): a fixed list, so no path from the URL reaches the disk.
ASSETS = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
    "job.js": "text/javascript; charset=utf-8",
}
# The page only reads the API and its own files: no inline script or style, no framing.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


@lru_cache(maxsize=8)
def static_text(name: str) -> str:
    return resources.files("backend.api").joinpath(f"static/{name}").read_text(encoding="utf-8")


def dashboard_html() -> str:
    return static_text("dashboard.html")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def dashboard() -> HTMLResponse:
    """The live dashboard: queues and their history, workers, jobs (filters, pages), enqueue."""
    return HTMLResponse(dashboard_html(), headers=HEADERS)


@router.get("/jobs/{job_id}", response_class=HTMLResponse, include_in_schema=False)
async def job_page(job_id: str) -> HTMLResponse:
    """The dashboard opened on one job: its fields, payload, result and the error of each attempt."""
    validate_job_id(job_id)  # a 422 for what can never be a job id
    return HTMLResponse(dashboard_html(), headers=HEADERS)


@router.get("/ui/{name}", include_in_schema=False)
async def asset(name: str) -> Response:
    if name not in ASSETS:
        raise HTTPException(status_code=404, detail=f"no file {name}")
    return Response(static_text(name), media_type=ASSETS[name], headers=HEADERS)
