"""Every rule's conda env lists what its script imports (checked statically, without conda).

What counts: every import in the rule's script, plus the imports that run when the library modules
it reaches are imported (module level, followed through ``fashionblip2``). Imports inside library
functions are left out on purpose: they are the optional backends (a VLM, an API client) that only
the rules choosing them need.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RULE = re.compile(r"^rule (\w+):\n(.*?)(?=^rule |\Z)", re.S | re.M)
# Import names whose conda-forge package has another name.
CONDA_NAME = {
    "PIL": "pillow",
    "yaml": "pyyaml",
    "torch": "pytorch",
    "open_clip": "open_clip_torch",
    "faiss": "faiss-cpu",
    "matplotlib": "matplotlib-base",
    "sklearn": "scikit-learn",
}


def rules() -> dict[str, tuple[str, str]]:
    """Rule name -> (conda env file, script), read from rules/*.smk."""
    out = {}
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        for name, body in RULE.findall(smk.read_text()):
            env = re.search(r'conda:\s*\n\s*"\.\./(envs/[\w.-]+\.yaml)"', body)
            script = re.findall(r"(workflow_scripts/\w+\.py)", body)
            assert env, f"{smk.name}: rule {name} has no conda: env"
            assert len(set(script)) == 1, f"{smk.name}: rule {name} should call one script, found {script}"
            out[name] = (env.group(1), script[0])
    return out


def env_packages(path: Path) -> set[str]:
    spec = yaml.safe_load(path.read_text())
    names = set()
    for dep in spec["dependencies"]:
        for item in dep["pip"] if isinstance(dep, dict) else [dep]:
            names.add(re.split(r"[<>=!\s\[]", item.split("::")[-1], maxsplit=1)[0].lower())
    return names


class _ModuleLevelImports(ast.NodeVisitor):
    """Imports that run when a module is imported: not inside functions or `if TYPE_CHECKING`."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def visit_FunctionDef(self, node: ast.AST) -> None:
        pass

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.names += [a.name for a in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            self.names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]


def _all_imports(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return names


def _library_file(module: str, root: Path) -> Path | None:
    path = root.joinpath(*module.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.exists():
            return candidate
    return None


def third_party_imports(script: Path, root: Path = ROOT, package: str = "fashionblip2") -> dict[str, list[str]]:
    """Top-level third-party module -> the chain of files that imports it."""
    found: dict[str, list[str]] = {}
    todo = [(script, [], _all_imports(ast.parse(script.read_text())))]
    seen = set()
    while todo:
        path, chain, names = todo.pop()
        chain = [*chain, str(path.relative_to(root))]
        for name in names:
            top = name.split(".")[0]
            if top == package:
                parts = name.split(".")
                for i in range(1, len(parts) + 1):
                    lib = _library_file(".".join(parts[:i]), root)
                    if lib and lib not in seen:
                        seen.add(lib)
                        visitor = _ModuleLevelImports()
                        visitor.visit(ast.parse(lib.read_text()))
                        todo.append((lib, chain, visitor.names))
            elif top not in sys.stdlib_module_names:
                found.setdefault(top, chain)
    return found


def missing_from_env(script: Path, env: Path, root: Path = ROOT, package: str = "fashionblip2") -> dict[str, list[str]]:
    packages = env_packages(env)
    return {
        module: chain
        for module, chain in third_party_imports(script, root, package).items()
        if CONDA_NAME.get(module, module).lower() not in packages
    }


def test_every_rule_has_an_env_and_a_script():
    found = rules()
    assert {"embed", "caption", "modification", "train_stage1", "table"} <= set(found)
    for env, script in found.values():
        assert (ROOT / env).exists(), env
        assert (ROOT / script).exists(), script


@pytest.mark.parametrize("rule", sorted(rules()))
def test_rule_env_lists_its_scripts_imports(rule):
    env, script = rules()[rule]
    missing = missing_from_env(ROOT / script, ROOT / env)
    assert not missing, "\n".join(
        f"rule {rule}: {module} (conda: {CONDA_NAME.get(module, module)}) is imported via "
        f"{' -> '.join(chain)} but not listed in {env}"
        for module, chain in sorted(missing.items())
    )


def test_the_check_finds_an_import_hidden_in_the_library(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "inner.py").write_text("import numpy\n\ndef lazy():\n    import torch\n")
    (tmp_path / "run.py").write_text("import yaml\nfrom pkg.inner import lazy\n")
    found = third_party_imports(tmp_path / "run.py", tmp_path, package="pkg")
    assert set(found) == {"yaml", "numpy"}  # torch is imported inside a function: an optional backend
    assert found["numpy"] == ["run.py", "pkg/inner.py"]
    env = tmp_path / "env.yaml"
    env.write_text("dependencies:\n  - python=3.11\n  - pyyaml>=6\n")
    assert set(missing_from_env(tmp_path / "run.py", env, tmp_path, package="pkg")) == {"numpy"}
