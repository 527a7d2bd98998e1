"""The package layout of DESIGN.md: one namespace, imports in one direction."""

import ast
from pathlib import Path

import frobnolab.analysis
import frobnolab.models
import frobnolab.scenes

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"scenes": ("frobnolab.models", "frobnolab.analysis"), "models": ("frobnolab.analysis",)}


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package
                yield "frobnolab." + path.parent.name + ("." + node.module if node.module else "") if node.level == 1 \
                    else "frobnolab." + (node.module or "")
            else:
                yield node.module or ""


def test_imports_go_one_way():
    for pkg, banned in FORBIDDEN.items():
        for f in (ROOT / pkg).rglob("*.py"):
            for name in _imports(f):
                assert not name.startswith(banned), f"{f.relative_to(ROOT)} imports {name}"
                assert name.split(".")[0] not in ("models", "analysis", "scenes"), f"{f}: bare top-level import {name}"


def test_packages_install_under_one_namespace():
    assert Path(frobnolab.scenes.__file__).parent == ROOT / "scenes"
    assert Path(frobnolab.models.__file__).parent == ROOT / "models"
    assert Path(frobnolab.analysis.__file__).parent == ROOT / "analysis"
