"""
The modules of ``rumpus_secure.web`` import one another without a cycle.

A cycle (it was ``app`` -> ``redirect`` -> ``site`` -> ``app``) only works
while every link but one is a function-level import; the first module-level
import on the loop breaks whichever module is imported first.  So the graph
counts every import, at any level.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import rumpus_secure.web

WEB = Path(rumpus_secure.web.__file__).parent
MODULES = sorted(p.stem for p in WEB.glob("*.py") if p.stem != "__init__")


def web_imports(module: str) -> set[str]:
    """The web modules that C{module} imports, at module or function level."""
    tree = ast.parse((WEB / f"{module}.py").read_text("utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.level:  # relative: from . import x / from .x import y
                names = [f"rumpus_secure.web.{node.module}"]
            else:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            prefix = "rumpus_secure.web."
            if name.startswith(prefix) and name[len(prefix):].split(".")[0] in MODULES:
                found.add(name[len(prefix):].split(".")[0])
    found.discard(module)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle in C{graph} as a list of nodes, or L{None}."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_cycle_finder_finds_the_old_cycle():
    old = {"app": {"redirect"}, "redirect": {"site"}, "site": {"app"}}
    assert find_cycle(old) == ["app", "redirect", "site", "app"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_web_import_graph_is_acyclic():
    graph = {module: web_imports(module) for module in MODULES}
    assert "redirect" not in graph["app"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


@pytest.mark.parametrize("module", MODULES)
def test_each_web_module_imports_alone(module):
    """Each module imports first in a fresh interpreter (no import order luck)."""
    result = subprocess.run(
        [sys.executable, "-c", f"import rumpus_secure.web.{module}"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
