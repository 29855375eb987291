"""Security: no code-executing deserialisers anywhere, a token on every mutating endpoint,
`rediss://` end to end against a local TLS redis-server, and no password from REDIS_URL in logs,
errors or `bagbot check` output (the plain-TCP cases are in test_cli.py and test_worker_cli.py)."""

from __future__ import annotations

import ast
import asyncio
import logging
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from backend.api.app import create_app
from backend.config import Settings
from backend.workers.job_store import StoreUnavailableError
from backend.workers.memory_job_store import MemoryJobStore
from backend.workers.models import Claim, JobSpec, JobState
from backend.workers.redis_job_store import RedisJobStore
from tests.redis_server import free_port, in_ci
from tests.worker_procs import ROOT, WorkerProcess

PASSWORD = "tls-S3cret-pa55"
TOKEN = "security-token-0123456789"

# -- no pickle: the source never deserialises with something that can run code ----------------------

BANNED_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle", "jsonpickle"}
BANNED_CALLS = {"eval", "exec", "__import__"}


def python_sources() -> list[Path]:
    files = [*ROOT.joinpath("backend").rglob("*.py"), *ROOT.joinpath("scripts").rglob("*.py")]
    assert len(files) > 10
    return sorted(files)


def test_no_pickle_marshal_or_eval_in_the_source() -> None:
    found = []
    for path in python_sources():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                names = [node.func.id] if node.func.id in BANNED_CALLS else []
            elif (isinstance(node, ast.Attribute) and node.attr in {"load", "unsafe_load", "full_load"}
                  and isinstance(node.value, ast.Name) and node.value.id == "yaml"):
                names = [f"yaml.{node.attr}"]  # yaml.safe_load only
            for name in names:
                if name in BANNED_MODULES or name in BANNED_CALLS or name.startswith("yaml."):
                    found.append(f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')} {name}")
    assert found == []


def test_no_code_loading_in_lua_or_the_dashboard() -> None:
    lua = ROOT / "backend" / "workers" / "lua"
    code_loaders = re.compile(r"(?<![\w.])(loadstring|load|dofile|loadfile)\s*\(")
    for path in lua.glob("*.lua"):
        found = code_loaders.search(path.read_text())
        assert found is None, f"{path.name}: {found.group(0) if found else ''}"
    for path in (ROOT / "backend" / "api" / "static").glob("*"):
        text = path.read_text()
        for banned in ("eval(", "new Function(", "document.write("):  # innerHTML: test_api.py
            assert banned not in text, f"{path.name}: {banned}"


# -- the token guards every mutating route, whatever routes exist -------------------------------------


async def test_every_mutating_route_needs_the_token() -> None:
    store = MemoryJobStore()
    app = create_app(Settings(api_token=TOKEN), store=store)
    job = await store.enqueue(JobSpec("bagbot.noop"))
    # Every operation the app serves, from its OpenAPI schema (FastAPI 0.165 nests included
    # routers, so app.routes no longer lists them flat); the app hides no route from the schema.
    mutating = [
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
        if method.upper() in {"POST", "PUT", "PATCH", "DELETE"}
    ]
    assert ("POST", "/api/jobs") in mutating and len(mutating) >= 3
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        for method, path in mutating:
            url = path.replace("{job_id}", job.id).replace("{queue}", "default")
            assert "{" not in url, f"fill in the path parameters of {path}"
            for headers in ({}, {"Authorization": "Bearer not-the-token"}, {"Authorization": TOKEN}):
                response = await client.request(method, url, json={"name": "bagbot.noop"}, headers=headers)
                assert response.status_code == 401, (method, path, headers, response.text)
    got = await store.get(job.id)
    assert got is not None and got.state is JobState.ENQUEUED  # nothing changed
    assert (await store.counts())["default"]["enqueued"] == 1


# -- rediss:// against a TLS redis-server with a certificate made here --------------------------------


@dataclass
class TlsRedis:
    port: int
    ca: Path
    proc: subprocess.Popen[bytes]

    def url(self, password: str = PASSWORD, verify: bool = True) -> str:
        query = f"ssl_cert_reqs=required&ssl_ca_certs={self.ca}" if verify else "ssl_cert_reqs=required"
        return f"rediss://:{password}@127.0.0.1:{self.port}/0?{query}"


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 / localhost, with the openssl CLI."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            "-days", "1", "-subj", "/CN=bagbot test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=localhost")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "1", "-extfile", "san.ext")
    return folder / "ca.crt", folder / "server.crt", folder / "server.key"


def wait_tls_ready(port: int, ca: Path, proc: subprocess.Popen[bytes]) -> bool:
    context = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with (socket.create_connection(("127.0.0.1", port), timeout=0.5) as raw,
                  context.wrap_socket(raw, server_hostname="127.0.0.1") as tls):
                tls.sendall(b"PING\r\n")
                if tls.recv(64).startswith((b"+PONG", b"-NOAUTH")):
                    return True
        except OSError:
            time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    binary, openssl = shutil.which("redis-server"), shutil.which("openssl")
    if binary is None or openssl is None:
        message = "TLS test needs redis-server and openssl on PATH"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    folder = tmp_path_factory.mktemp("tls")
    ca, cert, key = make_certificates(folder)
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
         "--tls-auth-clients", "no", "--requirepass", PASSWORD, "--save", "", "--appendonly", "no",
         "--dir", str(folder), "--maxmemory-policy", "noeviction"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        if not wait_tls_ready(port, ca, proc):
            # A redis-server built without TLS exits at once on --tls-port: say so, do not fail locally.
            if in_ci():
                pytest.fail("this redis-server did not start with TLS (built without it?)")
            pytest.skip("this redis-server build has no TLS support")
        yield TlsRedis(port, ca, proc)
    finally:
        proc.terminate()
        proc.wait(10)


async def test_rediss_enqueue_claim_finish(tls_redis: TlsRedis, prefix: str) -> None:
    store = RedisJobStore.from_url(tls_redis.url(), prefix=prefix)
    try:
        health = await store.health()
        assert health.ok and health.maxmemory_policy == "noeviction"
        job = await store.enqueue(JobSpec("bagbot.echo", args=["over tls"]))
        (claimed,) = await store.claim("tls-worker", ["default"], 1, 30)
        assert claimed.id == job.id and claimed.token is not None
        done = await store.complete(Claim(claimed.queue, claimed.id, claimed.token), result=["over tls"])
        assert done is JobState.DONE
        got = await store.get(job.id)
        assert got is not None and got.result == ["over tls"]
        assert "***" in store.safe_url and PASSWORD not in store.safe_url
    finally:
        await store.close()


async def test_rediss_refuses_an_unknown_ca_and_a_wrong_password_without_leaking_it(
    tls_redis: TlsRedis, prefix: str
) -> None:
    for url in (tls_redis.url(verify=False), tls_redis.url(password=f"wrong-{PASSWORD}")):
        store = RedisJobStore.from_url(url, prefix=prefix, cluster=False)
        try:
            with pytest.raises(StoreUnavailableError) as caught:
                await store.enqueue(JobSpec("bagbot.noop"))
            assert PASSWORD not in str(caught.value) and "***" in str(caught.value)
            health = await store.health()
            assert not health.ok and PASSWORD not in health.detail
        finally:
            await store.close()


async def test_worker_over_rediss_logs_no_password(tls_redis: TlsRedis, prefix: str, tmp_path: Path) -> None:
    env = {"JOB_STORE": "redis", "REDIS_URL": tls_redis.url(), "BAGBOT_PREFIX": prefix,
           "BAGBOT_HEARTBEAT_SECONDS": "0.5"}
    worker = WorkerProcess(tmp_path, "tls-worker", env)
    store = RedisJobStore.from_url(tls_redis.url(), prefix=prefix)
    try:
        await worker.wait_for_log("✓ Heartbeats being sent")
        job = await store.enqueue(JobSpec("bagbot.echo", args=[1]))
        for _ in range(200):
            got = await store.get(job.id)
            if got is not None and got.state is JobState.DONE:
                break
            await asyncio.sleep(0.05)
        assert got is not None and got.state is JobState.DONE
        worker.send(signal.SIGTERM)
        assert await worker.wait(30) == 0
        log = worker.log()
        assert "rediss://:***@127.0.0.1" in log and PASSWORD not in log
    finally:
        worker.stop()
        await store.close()


def test_bagbot_check_over_rediss_shows_no_password(tls_redis: TlsRedis, prefix: str) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("BAGBOT_", "JOB_STORE", "REDIS_URL"))}
    results = []
    for url, code in ((tls_redis.url(), 0), (tls_redis.url(password=f"wrong-{PASSWORD}"), 3)):
        env = {**base, "JOB_STORE": "redis", "REDIS_URL": url, "BAGBOT_PREFIX": prefix}
        result = subprocess.run([sys.executable, "-m", "backend.cli", "check"], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == code, result.stdout + result.stderr
        results.append(result.stdout + result.stderr)
    for output in results:
        assert PASSWORD not in output
    assert "***" in results[0] and "noeviction" in results[0]


async def test_backend_errors_and_logs_hide_the_password(caplog: pytest.LogCaptureFixture) -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"  # nobody listens there
    app = create_app(Settings(job_store="redis", redis_url=url, api_token=TOKEN))
    with caplog.at_level(logging.DEBUG):
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                auth = {"Authorization": f"Bearer {TOKEN}"}
                responses = [
                    await client.get("/api/ready"),
                    await client.get("/api/queues"),
                    await client.get("/api/metrics"),
                    await client.post("/api/jobs", json={"name": "bagbot.noop"}, headers=auth),
                ]
    for response in responses:
        assert response.status_code == 503
        assert PASSWORD not in response.text
    assert any("***" in r.getMessage() for r in caplog.records)
    assert all(PASSWORD not in r.getMessage() for r in caplog.records)
