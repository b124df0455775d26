"""The layout's rules, read from the imports themselves: each layer imports only the ones below it.

receiver.errors and receiver.rules (pure decisions and the records they decide over) import no
other part of the project; store imports only those two from the receiver; no backend imports
another; and no module imports, even lazily, a module that imports it back.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("receiver", "store")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


MODULES = modules()


def resolve(name: str) -> str | None:
    """The project module `name` refers to (a package's attribute import: the package)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(name: str) -> set[str]:
    """Every project module `name` imports, at the top or inside a function; type-only
    imports (under `if TYPE_CHECKING:`) do not run and are left out."""
    tree = ast.parse(MODULES[name].read_text())
    type_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for stmt in block.body
        for node in ast.walk(stmt)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            module = resolve(target)
            if module is not None and module != name:
                found.add(module)
    return found


GRAPH = {name: imports(name) for name in MODULES}


def layer(name: str) -> str:
    if name == "receiver.errors" or name.startswith("receiver.rules"):
        return "rules"
    return name.split(".")[0] if name.startswith("store") else "receiver"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if layer(n) == "rules"))
def test_rules_and_errors_import_no_other_part(name: str) -> None:
    assert {m for m in GRAPH[name] if layer(m) != "rules"} == set()


@pytest.mark.parametrize("name", sorted(n for n in MODULES if layer(n) == "store"))
def test_the_store_imports_only_rules_and_errors_from_the_receiver(name: str) -> None:
    assert {m for m in GRAPH[name] if layer(m) == "receiver"} == set()


@pytest.mark.parametrize(
    ("backend", "other"), [("store.sqlite", "store.postgres"), ("store.postgres", "store.sqlite")]
)
def test_no_backend_imports_another(backend: str, other: str) -> None:
    offenders = {
        name: sorted(m for m in GRAPH[name] if m.startswith(other))
        for name in MODULES
        if name.startswith(backend)
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            # a package's __init__ importing its own submodules is how a package exports them
            if nxt.startswith(node + "."):
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_one_that_imports_it_back() -> None:
    assert cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


LOWER = ("receiver.workers", "receiver.outbound", "receiver.media", "receiver.rules", "receiver.errors")


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith(LOWER)))
def test_workers_and_calls_never_import_a_route(name: str) -> None:
    """Routes sit on top: a worker or an outbound call never reaches up into one."""
    assert sorted(m for m in GRAPH[name] if m.startswith("receiver.routes")) == []


def test_every_package_is_in_the_wheel() -> None:
    """A package missing from pyproject.toml's list would be left out of the installed receiver
    (the Docker image) while every test run from the checkout still passed."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        module_name(path.parent / "__init__.py")
        for package in PACKAGES
        for path in (ROOT / package).rglob("__init__.py")
    } | {"receiver.static"}
    assert found == listed
