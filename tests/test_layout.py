"""The layout keeps the design visible: small modules, no import cycle, the core never imports up.

Read from the source with `ast`, so a violation names the file and the import.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BACKEND = ROOT / "backend"
MAX_LINES = 400
CORE = "backend.workers"
ABOVE_CORE = ("backend.api", "backend.cli", "backend.ops")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(BACKEND.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Project modules `path` imports (at run time or for type checking alike)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found.update(name for name in names if name in known)
    return found


def test_no_module_is_over_the_line_limit() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    long = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert long == {}, f"modules over {MAX_LINES} lines: {long}"


def test_the_core_never_imports_the_api_the_cli_or_the_tools() -> None:
    known = set(modules())
    bad = {
        name: sorted(i for i in imports_of(path, known) if i.startswith(ABOVE_CORE))
        for name, path in modules().items()
        if name.startswith(CORE)
    }
    assert {name: found for name, found in bad.items() if found} == {}


def test_no_import_cycle() -> None:
    known = set(modules())
    graph = {name: imports_of(path, known) - {name} for name, path in modules().items()}
    # a package's __init__ importing nothing of its own is the norm here; a cycle is a path back to the start
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str], on_path: set[str], done: set[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in on_path:
                cycles.append([*path[path.index(nxt):], nxt])
            elif nxt not in done:
                on_path.add(nxt)
                visit(nxt, [*path, nxt], on_path, done)
                on_path.discard(nxt)
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [start], {start}, done)
    assert cycles == [], f"import cycles: {cycles[:5]}"


def test_only_the_store_picker_names_backends() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted(BACKEND.rglob("*.py"))
        if path.name != "stores.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if ".backend ==" in line or ".backend !=" in line or 'job_store == "' in line
    ]
    assert offenders == []
