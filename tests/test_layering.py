"""The library's rooms import each other one way: no package imports a package that imports it back
(directly or through others), and the model (its losses and their gather) does not depend on training."""

from __future__ import annotations

import ast
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[1] / "fashionblip2"


def package_imports() -> dict[str, set[str]]:
    """Package -> the other fashionblip2 packages its modules import (at any depth of the module)."""
    graph: dict[str, set[str]] = {}
    for path in LIBRARY.rglob("*.py"):
        parts = path.relative_to(LIBRARY).parts
        if len(parts) < 2:  # top-level modules (cli, config, ...) sit above the rooms
            continue
        here = parts[0]
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                bits = name.split(".")
                if bits[0] == "fashionblip2" and len(bits) > 1 and (LIBRARY / bits[1]).is_dir() and bits[1] != here:
                    graph.setdefault(here, set()).add(bits[1])
    return graph


def test_the_model_does_not_import_training():
    assert "training" not in package_imports().get("model", set())


def test_no_two_rooms_import_each_other():
    graph = package_imports()

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    loops = sorted(f"{a} <-> {b}" for a, targets in graph.items() for b in targets if reaches(b, a, {b}))
    assert loops == [], loops
