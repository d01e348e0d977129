"""The architecture, checked from the source: who imports whom, file sizes, documented classes.

* ``master/`` never imports ``worker/`` and ``worker/`` never imports ``master/``: both share
  the neutral ``common/`` (the wire, the protocols); only the entry points import both.
* ``common/`` imports neither side, nor the experiments.
* No module imports itself through a circle (imports under ``if TYPE_CHECKING:`` are
  annotations only and do not count; an import of ``a.b.c`` is an edge to ``a.b.c``).
* An import inside a function says why (``# noqa: PLC0415 - reason``), as ruff enforces.
* No source file is longer than 500 lines; every public class has a docstring.
"""
from __future__ import annotations

import ast
import os

import pytest

from tests.processes import ROOT

PACKAGES = ("common", "master", "worker", "experiments", "hosts", "examples")
ENTRY_POINTS = ("main.py", "MPI_main.py")
FIRST_PARTY = PACKAGES + ("main", "MPI_main")


def _sources() -> dict[str, str]:
    """module name -> path of every first-party source file (tests and bench excluded)."""
    out = {}
    for pkg in PACKAGES:
        for folder, _, names in os.walk(os.path.join(ROOT, pkg)):
            for name in names:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    mod = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    out[mod.removesuffix(".__init__")] = path
    for name in ENTRY_POINTS:
        out[name[:-3]] = os.path.join(ROOT, name)
    return out


SOURCES = _sources()


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            ids.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return ids


def imports_of(module: str) -> list[tuple[str, int]]:
    """(first-party module imported, line) for every import in ``module`` (at any depth)."""
    path = SOURCES[module]
    tree = ast.parse(open(path).read(), path)
    skip = _type_checking_blocks(tree)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            # ``from a.b import c``: the module a.b.c if it is one, else a.b
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in SOURCES else base
                     for a in node.names]
        else:
            continue
        out += [(n, node.lineno) for n in names if n.split(".")[0] in FIRST_PARTY]
    return out


def test_the_import_graph_is_built_from_the_whole_source():
    assert len(SOURCES) > 60
    assert ("common.aggregation.rules.base", 0) not in imports_of("common.aggregation.rules.krum")
    assert "common.aggregation.rules.base" in [m for m, _ in imports_of("common.aggregation.rules.krum")]


@pytest.mark.parametrize("side,other", [("master", "worker"), ("worker", "master")])
def test_master_and_worker_never_import_each_other(side, other):
    bad = [f"{mod}:{line} imports {name}" for mod in SOURCES if mod.split(".")[0] == side
           for name, line in imports_of(mod) if name.split(".")[0] == other]
    assert not bad, bad


def test_common_imports_neither_side_nor_the_experiments():
    bad = [f"{mod}:{line} imports {name}" for mod in SOURCES if mod.startswith("common")
           for name, line in imports_of(mod)
           if name.split(".")[0] in ("master", "worker", "experiments", "examples", "main",
                                     "MPI_main")]
    assert not bad, bad


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circles():
    graph = {mod: {n for n, _ in imports_of(mod) if n in SOURCES and n != mod} for mod in SOURCES}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_a_circle_is_found():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_imports_inside_functions_say_why():
    bad = []
    for mod, path in SOURCES.items():
        lines = open(path).read().splitlines()
        tree = ast.parse("\n".join(lines), path)
        top = {id(n) for n in tree.body} | {id(n) for n in ast.walk(tree)
                                             if isinstance(n, (ast.If, ast.Try))}
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, (ast.Import, ast.ImportFrom)) and id(inner) not in top:
                        if "PLC0415 -" not in lines[inner.lineno - 1]:
                            bad.append(f"{os.path.relpath(path, ROOT)}:{inner.lineno}")
    assert not bad, bad


def test_no_source_file_over_500_lines():
    long = {os.path.relpath(p, ROOT): n for p in SOURCES.values()
            if (n := sum(1 for _ in open(p))) > 500}
    assert not long, long


def test_every_public_class_has_a_docstring():
    bad = []
    for mod, path in SOURCES.items():
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if (isinstance(node, ast.ClassDef) and not node.name.startswith("_")
                    and not ast.get_docstring(node)):
                bad.append(f"{mod}.{node.name}")
    assert not bad, bad


def test_every_test_the_docs_name_exists():
    """README.md, docs/*.md and hosts/README.md cite tests as ``test_x.py::name``: each one
    must exist, so a renamed or moved test cannot leave the fault tables pointing nowhere."""
    import re

    docs = [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "hosts", "README.md")]
    docs += [os.path.join(ROOT, "docs", n) for n in os.listdir(os.path.join(ROOT, "docs"))
             if n.endswith(".md")]
    missing = []
    for doc in docs:
        cited = re.findall(r"(test_[a-z_0-9]+\.py)::([A-Za-z_0-9]+)(?![A-Za-z_0-9*])", open(doc).read())
        for file, name in set(cited):
            path = os.path.join(ROOT, "tests", file)
            if not os.path.exists(path) or f"def {name}(" not in open(path).read():
                missing.append(f"{os.path.relpath(doc, ROOT)}: {file}::{name}")
    assert not missing, missing
