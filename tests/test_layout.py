"""The package's shape: imports only point down the layers, and no module imports itself in a circle.

Layers, bottom to top (README "Layout"): leaf helpers, data, models, methods, train, evaluation, config,
runs, reporting and handoff, api, cli. A module may import its own layer and the ones below.
"""

from __future__ import annotations

import ast
from pathlib import Path

import selfsup

PACKAGE = Path(selfsup.__file__).parent
LAYERS = [("io", "seeds", "schedules", "comm", "errors"), ("data",), ("models",), ("methods",), ("train",),
          ("evaluation",), ("config",), ("runs",), ("reporting", "handoff"), ("api",), ("cli", "__main__")]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in PACKAGE.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """The ``selfsup.*`` modules ``path`` imports (at any depth of the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("selfsup"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("selfsup"))
    return found


def _layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def test_every_module_belongs_to_a_layer():
    assert {_layer(m) for m in _modules() if m != "selfsup"} <= set(RANK)


def test_imports_only_point_down():
    upward = []
    for module, path in _modules().items():
        if module == "selfsup":  # the lazy facade: importlib by name, nothing at import time
            continue
        for target in _imports(path):
            if _layer(target) in RANK and RANK[_layer(target)] > RANK[_layer(module)]:  # not `selfsup.__version__`
                upward.append(f"{module} -> {target}")
    assert not upward, upward


def test_no_import_cycle():
    modules = _modules()
    graph = {m: {t for t in _imports(p) if t in modules and t != m} for m, p in modules.items()}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError(" -> ".join([*stack[stack.index(nxt):], nxt]))
            if nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])
