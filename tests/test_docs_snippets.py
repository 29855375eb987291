"""Every snippet of the README's "Writing a handler" and of docs/client.md runs here, as written.

The ```python blocks that start with `# myapp/<file>.py` are written to an application folder
of their own; a real worker (BAGBOT_TASKS=myapp.tasks) runs on a real Redis, the scripts run
as subprocesses, and their printed output is checked. The FastAPI module is served through
its own lifespan (TestClient) in a subprocess too.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_server import delete_prefix
from tests.worker_procs import WorkerProcess

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"```python\n(# (myapp/[\w/]+\.py)\n.*?)```", re.S)


def doc_files(text: str) -> dict[str, str]:
    return {path: body for body, path in BLOCK.findall(text)}


def readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Writing a handler")
    return text[start:text.index("\n## ", start + 1)]


class App:
    def __init__(self, tmp: Path, files: dict[str, str], env: dict[str, str]) -> None:
        self.dir = tmp / "app"
        (self.dir / "myapp").mkdir(parents=True)
        (self.dir / "myapp" / "__init__.py").write_text("")
        for path, body in files.items():
            (self.dir / path).write_text(body)
        self.env = env
        self.worker = WorkerProcess(tmp, "docs-worker", env | {"BAGBOT_TASKS": "myapp.tasks"}, cwd=self.dir)

    def run(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, *args], cwd=self.dir, env=self.env, capture_output=True, text=True, timeout=180
        )
        assert done.returncode == 0, done.stdout + done.stderr + self.worker.log()[-3000:]
        return done.stdout


@pytest.fixture
def env(redis_url: str, prefix: str) -> Iterator[dict[str, str]]:
    """The apps' environment on this test's prefix; the prefix is deleted afterwards."""
    ours = ("BAGBOT_", "JOB_STORE", "REDIS_URL")
    base = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    yield base | {"JOB_STORE": "redis", "REDIS_URL": redis_url, "BAGBOT_PREFIX": prefix}
    asyncio.run(delete_prefix(redis_url, prefix))


@pytest.fixture
def readme_app(tmp_path: Path, env: dict[str, str]) -> Iterator[App]:
    app = App(tmp_path, doc_files(readme_section()), env)
    yield app
    app.worker.stop()


@pytest.fixture
def client_doc_app(tmp_path: Path, env: dict[str, str]) -> Iterator[App]:
    app = App(tmp_path, doc_files((ROOT / "docs" / "client.md").read_text()), env)
    yield app
    app.worker.stop()


def test_the_readme_tour_runs(readme_app: App) -> None:
    assert set(doc_files(readme_section())) == {"myapp/tasks.py", "myapp/main.py"}
    out = readme_app.run("-m", "myapp.main").splitlines()
    assert out == [
        "{'sent_to': 'a@b.c', 'attempt': '1'}",
        "report-7.pdf",
        "failed: ValueError not an address: 'nobody'",
    ]
    direct = "from myapp.tasks import render_report; print(render_report(7))"
    assert readme_app.run("-c", direct) == "report-7.pdf\n"


def test_the_client_guide_runs(client_doc_app: App) -> None:
    files = doc_files((ROOT / "docs" / "client.md").read_text())
    assert set(files) == {"myapp/tasks.py", "myapp/enqueue.py", "myapp/web.py", "myapp/nightly.py"}
    out = client_doc_app.run("-m", "myapp.enqueue").splitlines()
    assert out[:4] == [
        "sent: {'sent_to': 'a@b.c', 'subject': 'hi', 'attempt': '1'}",
        "total: 42",
        "report: report-7.pdf",
        "failed: BadAddress not an address: 'nobody'",
    ]
    assert out[4] == "later: scheduled" and out[5].startswith("cancelled: ") and out[6] == "again: 42"
    nightly = client_doc_app.run("-m", "myapp.nightly").splitlines()
    assert nightly == ["sync total: 42", "sync failed: BadAddress"]
    web = (
        "from fastapi.testclient import TestClient\n"
        "from myapp.web import app\n"
        "with TestClient(app) as http:\n"
        "    job = http.post('/sum', params={'x': 3, 'y': 4}).json()['job']\n"
        "    print(http.get(f'/sum/{job}').json())\n"
    )
    assert client_doc_app.run("-c", web) == "{'total': 7}\n"
    assert client_doc_app.run("-c", "from myapp.tasks import add; print(add(2, 3))") == "5\n"


@pytest.mark.parametrize("source", ["README.md", "docs/client.md"])
def test_the_snippets_are_clean_under_mypy_strict(tmp_path: Path, source: str) -> None:
    from mypy import api

    text = (ROOT / source).read_text()
    files = doc_files(readme_section() if source == "README.md" else text)
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    for path, body in files.items():
        (tmp_path / path).write_text(body)
    stdout, stderr, status = api.run(
        ["--strict", "--cache-dir", str(tmp_path / "cache"), "--explicit-package-bases",
         str(tmp_path / "myapp")]
    )
    assert status == 0, stdout + stderr
