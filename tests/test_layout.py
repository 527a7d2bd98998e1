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


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["frobnolab"] + (parts if parts[0] != "frobnolab" else parts[1:]))


def _resolved_imports(path: Path):
    """(module imported, names taken from it) for every import in the file, relative ones resolved."""
    pkg = _module_name(path).split(".") if path.name == "__init__.py" else _module_name(path).split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(pkg[: len(pkg) - node.level + 1]) if node.level else ""
            mod = ".".join(p for p in (base, node.module or "") if p)
            yield mod, [a.name for a in node.names]


SOURCES = [f for d in ("scenes", "models", "analysis", "frobnolab") for f in (ROOT / d).rglob("*.py")]


def test_no_module_imports_another_modules_private_names():
    bad = [f"{f.relative_to(ROOT)}: from {mod} import {n}" for f in SOURCES for mod, names in _resolved_imports(f)
           for n in names if n.startswith("_") and mod.startswith("frobnolab")]
    assert bad == []


def test_no_two_modules_import_each_other():
    modules = {_module_name(f) for f in SOURCES}
    graph = {}
    for f in SOURCES:
        me = _module_name(f)
        deps = set()
        for mod, names in _resolved_imports(f):
            if mod.startswith("frobnolab"):
                subs = {f"{mod}.{n}" for n in names} & modules  # "from pkg import module" imports the module
                deps |= subs or {mod}
        graph[me] = deps - {me}
    cycles = sorted({tuple(sorted((a, b))) for a, ds in graph.items() for b in ds if a in graph.get(b, ())})
    assert cycles == []
