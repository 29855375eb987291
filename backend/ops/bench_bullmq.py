"""BullMQ's side of `bagbot bench --compare-bullmq`: find node and the bullmq package, run the shared scripts.

The scripts (`bench.mjs`, `mem.mjs`) live outside this repo (by default `../shared/bench/bullmq`
beside it) and are run unchanged: each is copied into a temporary folder whose `node_modules`
links to a folder where `npm install bullmq@5.81.5` was done, because Node resolves a script's
imports from where the script is. They FLUSHDB the server they are given, so the caller gives
them a private one (bench_server.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BULLMQ_VERSION = "5.81.5"
REPO = Path(__file__).resolve().parents[2]
DEFAULT_SCRIPTS = REPO.parent / "shared" / "bench" / "bullmq"
DEFAULT_CACHE = REPO / ".cache" / "bullmq"  # git-ignored; npm installs here when nothing else is given
SCRIPTS = ("bench.mjs", "mem.mjs")


class BullmqUnavailable(Exception):
    """node, npm, the bullmq package or the shared scripts are missing: the message says which."""


@dataclass(frozen=True, slots=True)
class Bullmq:
    """Where the shared scripts and an installed bullmq package are, and which node runs them."""

    node: str
    scripts: Path
    node_modules: Path
    version: str

    def run(self, port: int, jobs: int, timeout: float = 600.0) -> dict[str, Any]:
        """`bench.mjs` then `mem.mjs` on 127.0.0.1:`port`; their JSON figures, merged."""
        figures: dict[str, Any] = {"bullmq_version": self.version}
        with tempfile.TemporaryDirectory(prefix="bagbot-bullmq-") as folder:
            (Path(folder) / "node_modules").symlink_to(self.node_modules.resolve(), target_is_directory=True)
            for script in SCRIPTS:
                shutil.copyfile(self.scripts / script, Path(folder) / script)
                done = subprocess.run([self.node, script, str(port), str(jobs)], cwd=folder,
                                      capture_output=True, text=True, timeout=timeout)
                if done.returncode != 0:
                    raise RuntimeError(f"node {script} failed ({done.returncode}): {done.stderr[-2000:]}")
                figures.update(_last_json(done.stdout, script))
        return figures


def _last_json(stdout: str, script: str) -> dict[str, Any]:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            parsed: dict[str, Any] = json.loads(line)
            return parsed
    raise RuntimeError(f"node {script} printed no JSON: {stdout[-500:]!r}")


def _installed_version(node_modules: Path) -> str | None:
    try:
        package = json.loads((node_modules / "bullmq" / "package.json").read_text())
    except (OSError, ValueError):
        return None
    version = package.get("version")
    return version if isinstance(version, str) else None


def _npm_install(cache: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise BullmqUnavailable(f"bullmq is not installed in {cache / 'node_modules'} and npm is not on "
                                f"PATH; install it there (npm install bullmq@{BULLMQ_VERSION}) or pass "
                                "--bullmq-node-modules")
    cache.mkdir(parents=True, exist_ok=True)
    if not (cache / "package.json").exists():
        (cache / "package.json").write_text('{"name": "bagbot-bench-bullmq", "private": true}\n')
    done = subprocess.run([npm, "install", "--no-audit", "--no-fund", f"bullmq@{BULLMQ_VERSION}"], cwd=cache,
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise BullmqUnavailable(f"npm install bullmq@{BULLMQ_VERSION} in {cache} failed: "
                                f"{done.stderr[-1000:]}")


def find_bullmq(scripts: Path | None, node_modules: Path | None) -> Bullmq:
    """Check everything the BullMQ run needs; BullmqUnavailable naming what is missing.

    Without `node_modules`, bullmq is installed into the git-ignored `.cache/bullmq` on first use
    (npm, once); a `node_modules` that is given is used as it is, never installed into.
    """
    node = shutil.which("node")
    if node is None:
        raise BullmqUnavailable("node is not on PATH: --compare-bullmq runs BullMQ's scripts with Node 20+")
    folder = scripts or DEFAULT_SCRIPTS
    missing = [name for name in SCRIPTS if not (folder / name).is_file()]
    if missing:
        raise BullmqUnavailable(f"{', '.join(missing)} not found in {folder}; pass --bullmq-dir, the folder "
                                "holding the shared BullMQ scripts (bench.mjs, mem.mjs)")
    if node_modules is None:
        node_modules = DEFAULT_CACHE / "node_modules"
        if _installed_version(node_modules) is None:
            _npm_install(DEFAULT_CACHE)
    version = _installed_version(node_modules)
    if version is None:
        raise BullmqUnavailable(f"no bullmq package in {node_modules}; run `npm install "
                                f"bullmq@{BULLMQ_VERSION}` in its parent folder, or leave "
                                "--bullmq-node-modules out to install into .cache/")
    return Bullmq(node=node, scripts=folder, node_modules=node_modules, version=version)
