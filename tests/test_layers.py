"""The layering a newcomer can see, checked on the source (the standard library's `ast`):
no import cycle between torpor's top-level packages and modules, the control API never
imports the data path, the data path never imports the wiring, modules stay small.

Imports under `if TYPE_CHECKING:` are left out (they never run); imports inside functions
count (they run, later)."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "torpor"
# The most lines a module may have (DESIGN.md: under ~600); test doubles and migrations aside.
MAX_LINES = 650
# Package edges that still close a cycle, each with what removes it. The test fails when one
# is gone (take it off this list) as well as on any new cycle. None today.
KNOWN: set[tuple[str, str]] = set()
# Exception classes live in errors.py, except these (docs/architecture.md says why): the
# SDK's own hierarchy, what a client catches; and the function server, which runs in the
# image's environment with the standard library only.
ERROR_MODULES = {"errors.py", "sdk/errors.py"}
WORKER_SIDE_ERRORS = {"functions/server.py": {"CallError", "NoSuchCall"}}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def top(module: str) -> str:
    """`torpor.metering.meter` → `torpor.metering`; `torpor.spec` → `torpor.spec`."""
    return ".".join(module.split(".")[:2])


def imports_of(path: Path) -> set[str]:
    """The torpor modules `path` imports at run time."""
    tree = ast.parse(path.read_text(), str(path))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    me = module_name(path).split(".")
    package = me if path.name == "__init__.py" else me[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                found.add(".".join([*base, *([node.module] if node.module else [])]))
            elif node.module:
                found.add(node.module)
    return {m for m in found if m == "torpor" or m.startswith("torpor.")}


def sources() -> list[Path]:
    return [p for p in SRC.rglob("*.py") if "migrations" not in p.parts]


def package_graph() -> dict[str, dict[str, set[str]]]:
    """package → package it imports → the modules that do."""
    graph: dict[str, dict[str, set[str]]] = {}
    for path in sources():
        src = module_name(path)
        for target in imports_of(path):
            a, b = top(src), top(target)
            if a != b and b != "torpor":
                graph.setdefault(a, {}).setdefault(b, set()).add(src)
    return graph


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_find_cycle_finds_one_and_only_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_imports_of_skips_type_checking() -> None:
    graph = package_graph()
    # torpor.engines refers to the spec for types only.
    assert "torpor.spec" not in graph.get("torpor.engines", {})
    assert "torpor.engines" in graph["torpor.spec"]


def test_no_import_cycle_between_packages() -> None:
    graph = package_graph()
    for a, b in KNOWN:
        assert b in graph.get(a, {}), f"{a} -> {b} is gone: take it off KNOWN"
    edges = {a: {b for b in targets if (a, b) not in KNOWN} for a, targets in graph.items()}
    cycle = find_cycle(edges)
    if cycle is not None:
        how = [
            f"{x} -> {y} ({', '.join(sorted(graph[x][y]))})" for x, y in itertools.pairwise(cycle)
        ]
        raise AssertionError("import cycle between packages:\n" + "\n".join(how))


def test_no_import_cycle_between_modules_of_a_package() -> None:
    modules: dict[str, set[str]] = {}
    for path in sources():
        modules[module_name(path)] = imports_of(path)
    for package in {top(m) for m in modules}:
        inside = {m: {t for t in ts if top(t) == package} for m, ts in modules.items()}
        inside = {m: ts for m, ts in inside.items() if top(m) == package}
        # A package's __init__ re-exports its modules: not a cycle of the modules themselves.
        edges = {m: {t for t in ts if t != package} for m, ts in inside.items() if m != package}
        assert find_cycle(edges) is None, (package, find_cycle(edges))


def test_the_control_api_never_imports_the_data_path_and_the_data_path_no_wiring() -> None:
    graph = package_graph()
    assert "torpor.gateway" not in graph.get("torpor.api", {})
    wiring = {"torpor.app", "torpor.services", "torpor.server", "torpor.api", "torpor.cli"}
    assert not wiring & set(graph.get("torpor.gateway", {}))


def test_modules_stay_small() -> None:
    big = {
        str(p.relative_to(SRC)): n
        for p in sources()
        if "testing" not in p.parts and (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert big == {}


# Exception bases whose names do not say so (builtins and torpor's own).
ERROR_BASES = {"BaseException", "Warning", "OSError", "TorporError", "QueueFull"}


def exception_classes(path: Path) -> set[str]:
    """The classes `path` defines that derive from an exception: a base named `...Error`,
    `...Exception` or one of ERROR_BASES, or another exception class of the same module."""
    classes = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ClassDef)]
    found: set[str] = set()
    changed = True
    while changed:
        changed = False
        for cls in classes:
            bases = {ast.unparse(b).rsplit(".", 1)[-1] for b in cls.bases}
            if cls.name not in found and any(
                b in found or b in ERROR_BASES or b.endswith(("Error", "Exception")) for b in bases
            ):
                found.add(cls.name)
                changed = True
    return found


def test_exception_classes_finds_exceptions() -> None:
    errors = exception_classes(SRC / "errors.py")
    assert {"TorporError", "BudgetExceeded", "AddressNotAllowed", "EngineFailed"} <= errors
    assert "Spent" not in exception_classes(SRC / "metering" / "budget.py")


def test_every_exception_class_is_in_errors_py_except_the_worker_side_ones() -> None:
    outside = {}
    for path in sources():
        rel = str(path.relative_to(SRC))
        if rel in ERROR_MODULES:
            continue
        found = exception_classes(path) - WORKER_SIDE_ERRORS.get(rel, set())
        if found:
            outside[rel] = sorted(found)
    assert outside == {}, f"exception classes outside torpor/errors.py: {outside}"
    for rel, names in WORKER_SIDE_ERRORS.items():
        assert names <= exception_classes(SRC / rel), f"{rel}: {names} gone, update the list"
