"""The floor `bagbot bench` prints beside its Redis CPU, and `--compare-bullmq` (figures never asserted).

The BullMQ run itself needs node and an installed bullmq package: it is skipped when they are
absent (CI has node but must not depend on an npm download); what the command says when they
are missing is tested everywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from backend.ops.bench_bullmq import DEFAULT_CACHE, DEFAULT_SCRIPTS
from backend.ops.bench_compare import ROWS, Comparison
from backend.ops.bench_floor import Floor, floor_cpu_us_per_job
from backend.ops.redis_info import RedisInfo
from tests.conftest import delete_cluster_prefix
from tests.redis_server import delete_prefix
from tests.worker_procs import ROOT


def bagbot(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "backend.cli", "bench", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture
async def floor(redis_url: str, prefix: str) -> AsyncIterator[Floor]:
    client = Redis.from_url(redis_url, decode_responses=True)
    found = Floor(client, prefix, "bench")
    await found.load()
    yield found
    await client.aclose()
    await delete_prefix(redis_url, prefix)


async def test_the_floor_finishes_a_job_only_with_its_current_token(floor: Floor) -> None:
    ids = [f"job{i}" for i in range(150)]
    assert await floor.enqueue(ids[:100]) == 100
    assert await floor.enqueue(ids[100:]) == 50
    claimed = await floor.claim()
    assert len(claimed) == 100 and len({token for _, token in claimed}) == 100
    stale = [(job_id, token + "x") for job_id, token in claimed]
    assert await floor.finish(stale) == 0  # a wrong token finishes nothing
    assert await floor.finish(claimed[:10]) == 10
    assert await floor.finish(claimed[:10]) == 0  # a repeated finish: the token was cleared
    assert await floor.client.zcard(floor.running) == 90
    assert await floor.finish(claimed[10:]) == 90
    assert await floor.cycle(0) == 50  # the rest, 100 per call
    assert await floor.client.zcard(floor.done) == 150
    assert await floor.client.zcard(floor.running) == 0
    assert await floor.client.hget(floor.job_prefix + "job7", "state") == "done"


async def test_the_floor_skips_a_ready_entry_whose_job_is_not_enqueued(floor: Floor) -> None:
    await floor.enqueue(["a", "b"])
    await floor.client.hset(floor.job_prefix + "a", "state", "cancelled")
    await floor.client.delete(floor.job_prefix + "b")
    assert await floor.claim() == []


async def test_floor_cpu_is_measured_over_a_whole_cycle(redis_url: str, prefix: str) -> None:
    info = await RedisInfo.connect(redis_url)
    try:
        assert await floor_cpu_us_per_job(info, redis_url, prefix, "bench", 250) > 0
    finally:
        await info.close()
        await delete_prefix(redis_url, prefix)


@pytest.mark.redis_only
async def test_the_floor_runs_on_a_cluster(redis_cluster_url: str, prefix: str) -> None:
    info = await RedisInfo.connect(redis_cluster_url)  # sums INFO cpu over every master
    try:
        assert len(info.nodes) > 1
        assert await floor_cpu_us_per_job(info, redis_cluster_url, prefix, "bench", 250) > 0
    finally:
        await info.close()
        await delete_cluster_prefix(redis_cluster_url, prefix)


def test_comparison_judges_each_target_on_the_median_of_the_pairs_ratios() -> None:
    def pair(drain: float, theirs_drain: float, p99: float) -> dict[str, dict[str, float]]:
        ours = {row.ours: 1.0 for row in ROWS} | {"drain_jobs_per_s": drain, "latency_p99_ms": p99}
        theirs = {row.theirs: 1.0 for row in ROWS if row.theirs} | {"drain_jobs_per_s": theirs_drain}
        return {"bagbot": ours, "bullmq": theirs}

    comparison = Comparison(jobs=10, redis_version="7", bullmq_version="5",
                            pairs=[pair(100, 200, 1.0), pair(300, 300, 2.0), pair(900, 100, 5.0)])
    comparison.summarise()
    rows = {line["measure"]: line for line in comparison.rows}
    drain = rows["drain, 1 worker (jobs/s)"]
    assert (drain["bagbot"], drain["bullmq"], drain["ratio"], drain["met"]) == (300, 200, 1.0, True)
    p99 = rows["start latency p99 (ms)"]
    assert (p99["bagbot"], p99["bullmq"], p99["ratio"], p99["met"]) == (2.0, None, None, True)
    assert rows["memory/queued job (B)"]["met"] is True  # equal to BullMQ's meets "≤ BullMQ"
    assert rows["Redis CPU/job (µs)"]["met"] is None  # no target: printed for the record


@pytest.mark.slow
def test_bench_prints_the_floor_beside_our_redis_cpu(redis_url: str) -> None:
    done = bagbot("--jobs", "300", "--latency-jobs", "20", "--latency-rate", "100", "--redis-url", redis_url)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "floor: minimal lifecycle" in done.stdout and "ours / floor" in done.stdout, done.stdout


def test_compare_bullmq_without_the_scripts_says_so(tmp_path: Path) -> None:
    done = bagbot("--compare-bullmq", "--bullmq-dir", str(tmp_path), "--bullmq-node-modules", str(tmp_path))
    if shutil.which("node") is None:
        assert done.returncode == 2 and "node is not on PATH" in done.stderr
    else:
        assert done.returncode == 2, done.stderr
        assert f"bench.mjs, mem.mjs not found in {tmp_path}" in done.stderr, done.stderr


def test_compare_bullmq_without_the_package_says_so(tmp_path: Path) -> None:
    for script in ("bench.mjs", "mem.mjs"):
        (tmp_path / script).write_text("")
    empty = tmp_path / "node_modules"
    empty.mkdir()
    (empty / "bullmq").mkdir()  # a folder, but no package.json: not an installed package
    done = bagbot("--compare-bullmq", "--bullmq-dir", str(tmp_path), "--bullmq-node-modules", str(empty))
    assert done.returncode == 2
    if shutil.which("node") is not None:
        assert f"no bullmq package in {empty}" in done.stderr, done.stderr


def test_compare_bullmq_without_node_says_so(tmp_path: Path) -> None:
    env = dict(os.environ, PATH=str(tmp_path))  # nothing on PATH: no node (python runs by full path)
    done = bagbot("--compare-bullmq", "--bullmq-dir", str(tmp_path), env=env)
    assert done.returncode == 2 and "node is not on PATH" in done.stderr, done.stderr


def test_compare_bullmq_refuses_more_than_one_worker(tmp_path: Path) -> None:
    done = bagbot("--compare-bullmq", "--workers", "2", "--bullmq-dir", str(tmp_path))
    assert done.returncode == 2 and "one worker process" in done.stderr, done.stderr


@pytest.mark.slow
def test_a_failing_bullmq_script_ends_the_comparison_with_its_error(tmp_path: Path) -> None:
    if shutil.which("node") is None or shutil.which("redis-server") is None:
        pytest.skip("needs node and redis-server")
    (tmp_path / "bench.mjs").write_text("console.error('no bullmq here'); process.exit(3);\n")
    (tmp_path / "mem.mjs").write_text("")
    package = tmp_path / "node_modules" / "bullmq"
    package.mkdir(parents=True)
    (package / "package.json").write_text('{"name": "bullmq", "version": "0.0.0-fake"}')
    done = bagbot("--compare-bullmq", "--pairs", "1", "--jobs", "50", "--latency-jobs", "5",
                  "--bullmq-dir", str(tmp_path), "--bullmq-node-modules", str(tmp_path / "node_modules"))
    assert done.returncode == 1, done.stderr[-3000:]
    assert "node bench.mjs failed (3): no bullmq here" in done.stderr, done.stderr[-3000:]


def _bullmq_paths() -> tuple[Path, Path] | None:
    scripts = Path(os.environ.get("BAGBOT_BULLMQ_DIR", DEFAULT_SCRIPTS))
    modules = Path(os.environ.get("BAGBOT_BULLMQ_NODE_MODULES", DEFAULT_CACHE / "node_modules"))
    installed = (modules / "bullmq" / "package.json").is_file()
    if shutil.which("node") and (scripts / "bench.mjs").is_file() and installed:
        return scripts, modules
    return None


@pytest.mark.slow
def test_compare_bullmq_prints_every_target() -> None:
    paths = _bullmq_paths()
    if paths is None:
        pytest.skip("node, the shared BullMQ scripts or an installed bullmq package is missing "
                    "(BAGBOT_BULLMQ_DIR, BAGBOT_BULLMQ_NODE_MODULES)")
    if shutil.which("redis-server") is None:
        pytest.skip("no redis-server: --compare-bullmq starts a private one")
    done = bagbot("--compare-bullmq", "--pairs", "1", "--jobs", "300", "--latency-jobs", "20", "--json",
                  "--bullmq-dir", str(paths[0]), "--bullmq-node-modules", str(paths[1]))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert len(result["pairs"]) == 1 and result["bullmq_version"]
    assert [line["measure"] for line in result["rows"]] == [row.label for row in ROWS]
    for row, line in zip(ROWS, result["rows"], strict=True):
        assert line["bagbot"] > 0, row.label
        if row.theirs:
            assert line["bullmq"] > 0 and line["ratio"] > 0, row.label
        if row.kind:
            assert isinstance(line["met"], bool), row.label
