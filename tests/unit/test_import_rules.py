"""The layering holds: the intent contract is stdlib only, and the agent side never reaches server code.

Read from the source (every import statement, inside functions and TYPE_CHECKING blocks too), and checked
once more by importing the agent side in a fresh interpreter.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[2] / "src" / "neutrino"
SERVER_SIDE = ("neutrino.api", "neutrino.services", "neutrino.sync", "neutrino.db", "neutrino.identity")
AGENT_SIDE = ("agent", "compile", "dataplane", "intent")


def imports(path: Path) -> list[str]:
    """Every module an import statement in ``path`` names (relative imports resolved)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    package = parts[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            out.append(module)
            out += [f"{module}.{alias.name}" for alias in node.names]  # `from neutrino import api`
    return out


def modules_of(sub: str) -> list[Path]:
    return sorted((PACKAGE / sub).rglob("*.py"))


@pytest.mark.parametrize("path", modules_of("intent"), ids=lambda p: p.name)
def test_the_intent_contract_is_stdlib_only(path: Path) -> None:
    foreign = []
    for name in imports(path):
        top = name.split(".")[0]
        if name.startswith("neutrino.intent") or top == "__future__" or top in sys.stdlib_module_names:
            continue
        foreign.append(name)
    assert not foreign, f"{path.name} imports {foreign}"


@pytest.mark.parametrize("path", [p for sub in AGENT_SIDE for p in modules_of(sub)],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_agent_side_never_imports_server_code(path: Path) -> None:
    wrong = [name for name in imports(path) if name.startswith(SERVER_SIDE)]
    assert not wrong, f"{path.relative_to(PACKAGE)} imports {wrong}"


def test_importing_the_agent_loads_no_sqlalchemy() -> None:
    code = f"""
import importlib, pkgutil, sys
for pkg in ("neutrino.agent", "neutrino.compile", "neutrino.dataplane", "neutrino.intent"):
    p = importlib.import_module(pkg)
    for mi in pkgutil.walk_packages(p.__path__, pkg + "."):
        importlib.import_module(mi.name)
loaded = [m for m in sys.modules if m.split(".")[0] == "sqlalchemy" or m.startswith({SERVER_SIDE!r})]
print(" ".join(sorted(loaded)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "", f"importing the agent side loaded: {out}"
