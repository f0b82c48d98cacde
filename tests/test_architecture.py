"""The package's shape, checked: the layer rule (import-linter), no import circles, no
imports of our own modules hidden inside functions, and a pinned plugin facade."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import receiver
import receiver.jobs
from receiver.store.enqueue import JOB_FUNCTION

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "receiver"


def test_the_import_linter_contracts_hold():
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import of our own code."""
    name = _module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool, type_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                visit(child, in_function, True)
                continue
            if isinstance(child, ast.ImportFrom) and not type_only:
                if child.level:
                    base = package[: len(package) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target.split(".")[0] in ("receiver", "handlers"):
                    for alias in child.names:
                        full = f"{target}.{alias.name}"
                        found.append((full if _is_module(full) else target, child.lineno, in_function))
            elif isinstance(child, ast.Import) and not type_only:
                for alias in child.names:
                    if alias.name.split(".")[0] in ("receiver", "handlers"):
                        found.append((alias.name, child.lineno, in_function))
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, nested, type_only)

    visit(ast.parse(path.read_text()), False, False)
    return found


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _sources() -> list[Path]:
    return sorted([*PACKAGE.rglob("*.py"), *(ROOT / "handlers").rglob("*.py")])


def test_no_import_of_our_own_code_sits_inside_a_function():
    hidden = []
    for path in _sources():
        lines = path.read_text().splitlines()
        for target, line, in_function in _imports(path):
            # Allowed where a comment on the line says why (e.g. a heavy optional dependency).
            if in_function and "#" not in lines[line - 1]:
                hidden.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not hidden, "imports inside functions (a sign of a circle):\n" + "\n".join(hidden)


def test_no_import_circle_among_modules():
    graph = {_module_name(path): set() for path in _sources()}
    for path in _sources():
        for target, _, _ in _imports(path):
            if target in graph:
                graph[_module_name(path)].add(target)
    # The package's own __init__ (the facade) imports down into everything; a module
    # importing it back would be caught by the contracts above, so leave it out here.
    graph.pop("receiver", None)
    circles = _strongly_connected(graph)
    assert not circles, f"import circles: {circles}"


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: every group of two or more modules that import each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return groups


def test_the_circle_finder_finds_a_circle():
    assert _strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_code_points_to_docs_in_this_repository_only():
    outside = []
    for path in [*_sources(), *(ROOT / "docs").glob("*.md"), ROOT / "README.md"]:
        text = path.read_text()
        for needle in ("DESIGN.md", "../shared", "osma-api.txt", "ogsm-api.txt", "ogsm-api-actions.txt"):
            if needle in text:
                outside.append(f"{path.relative_to(ROOT)} mentions {needle}")
    assert not outside, "\n".join(outside)


def test_jobs_are_stored_under_the_released_entry_point():
    assert JOB_FUNCTION == "receiver.jobs.run_handler"
    assert receiver.jobs.run_handler.__module__ == "receiver.jobs"
