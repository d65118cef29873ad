"""The house has no hidden cycles: config.py imports nothing of ours, and every module imports.

Imports are read from the source (function-level ones too: a lazy import hides a cycle from
Python, not from us). Imports under `if TYPE_CHECKING:` are for type checkers only.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import scattergate

ROOT = Path(scattergate.__file__).parent


def module_names() -> dict[str, Path]:
    names = {}
    for path in ROOT.rglob("*.py"):
        parts = ("scattergate",) + path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


MODULES = module_names()


def imports_of(path: Path) -> set[str]:
    """The scattergate modules `path` imports, at any level, outside TYPE_CHECKING blocks."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(node) for block in ast.walk(tree)
                   if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
                   for node in ast.walk(block)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "scattergate":
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "scattergate")
    return {name for name in found if name in MODULES}


def test_config_imports_nothing_of_ours() -> None:
    assert imports_of(MODULES["scattergate.config"]) == set()


@pytest.mark.parametrize("name", sorted(set(MODULES) - {"scattergate.__main__"}))  # runs the CLI
def test_every_module_imports(name: str) -> None:
    importlib.import_module(name)
