"""Imports inside scenes/ and models/ go one way: no two modules import each other (even inside a function)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _graph(pkg: str) -> dict[str, set[str]]:
    graph = {}
    for f in (ROOT / pkg).glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                name = node.module or ""
                if node.level == 1:
                    deps |= {name} if name else {a.name for a in node.names}
                elif name.startswith(f"frobnolab.{pkg}."):
                    deps.add(name.split(".")[2])
        graph[f.stem] = deps - {f.stem}
    return graph


def test_no_module_cycles_in_scenes_and_models():
    for pkg in ("scenes", "models"):
        graph = _graph(pkg)
        for start in graph:  # depth-first search for a path back to start
            seen, stack = set(), list(graph[start])
            while stack:
                m = stack.pop()
                assert m != start, f"{pkg}/{start}.py is part of an import cycle"
                if m not in seen and m in graph:
                    seen.add(m)
                    stack.extend(graph[m])
