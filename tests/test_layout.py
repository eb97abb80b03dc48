"""The package layout: arrows between aivd's packages, and between the modules of its CLI, point one way."""

import ast
from collections import defaultdict
from pathlib import Path

AIVD = Path(__file__).resolve().parents[1] / "aivd"


def imported_names(path: Path) -> list[str]:
    """The dotted names a module imports, lazy imports included: `from a.b import c` imports `a.b`, and `a.b.c`
    when c is a module."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return names


def package_imports() -> dict[str, set[str]]:
    """For each top-level package of aivd, the other aivd packages its modules import."""
    edges: dict[str, set[str]] = defaultdict(set)
    for path in AIVD.rglob("*.py"):
        parts = path.relative_to(AIVD).parts
        if len(parts) == 1:
            continue  # aivd/__init__.py
        for name in imported_names(path):
            target = name.split(".")
            if target[0] == "aivd" and len(target) > 1 and target[1] != parts[0] and (AIVD / target[1]).is_dir():
                edges[parts[0]].add(target[1])
    return edges


def cli_module_imports() -> dict[str, set[str]]:
    """For each module of aivd.cli, the other modules of aivd.cli it imports."""
    cli = AIVD / "cli"
    modules = {path.stem for path in cli.glob("*.py")}
    edges: dict[str, set[str]] = defaultdict(set)
    for path in cli.glob("*.py"):
        for name in imported_names(path):
            target = name.split(".")
            if target[:2] == ["aivd", "cli"] and len(target) > 2 and target[2] in modules and target[2] != path.stem:
                edges[path.stem].add(target[2])
    return edges


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in edges.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_no_package_is_in_an_import_cycle():
    edges = package_imports()
    cycles = sorted(package for package in edges if package in reachable(edges, package))
    assert cycles == [], f"packages in an import cycle: {cycles}; {dict(edges)}"


def test_core_and_schema_import_no_other_package():
    edges = package_imports()
    assert edges.get("core", set()) == set()
    assert edges.get("schema", set()) <= {"core"}


def test_no_cli_module_is_in_an_import_cycle():
    edges = cli_module_imports()
    assert edges["main"] >= {"inspect", "train", "bench"}  # the check reads the imports it should
    cycles = sorted(module for module in edges if module in reachable(edges, module))
    assert cycles == [], f"aivd.cli modules in an import cycle: {cycles}; {dict(edges)}"


def test_the_check_sees_a_cycle():
    assert reachable({"a": {"b"}, "b": {"a"}}, "a") == {"a", "b"}
