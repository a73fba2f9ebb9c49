"""The shape of the code, read from its source with ``ast`` (issue 20): which app may import
which. Imports inside functions count the same as those at the top of a module."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(source: str, *, package: str) -> list[tuple[int, str]]:
    """(line, module) of every import in ``source``, a module of ``package`` (dotted):
    ``import``, ``from ... import`` (relative ones resolved), and ``importlib.import_module``
    or ``__import__`` of a constant name, at any depth."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            found.append((node.lineno, module))
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def imports_of_app(app: str, target: str) -> list[str]:
    """Each import of ``target`` (or a module below it) in any module of ``app``, as
    "path:line imports module"."""
    offending = []
    for path in sorted((ROOT / app).rglob("*.py")):
        package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
        for line, module in imported_modules(path.read_text(), package=package):
            if module == target or module.startswith(f"{target}."):
                offending.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return offending


def test_approvals_imports_no_agents_module():
    """Approvals knows nothing of runs: the runtime registers its subject handler
    (approvals.subjects) instead of approvals calling into agents."""
    assert imports_of_app("approvals", "agents") == []


def test_the_import_check_sees_imports_in_functions_relative_and_dynamic_ones():
    source = (
        "import importlib\n"
        "def f():\n"
        "    from agents.tools import get_tool\n"
        "    import agents.runtime as rt\n"
        "    return importlib.import_module('agents.selectors'), __import__('agents')\n"
        "from ..agents import broker\n"
        "from . import models\n"
    )
    assert sorted(imported_modules(source, package="approvals")) == [
        (1, "importlib"),
        (3, "agents.tools"),
        (4, "agents.runtime"),
        (5, "agents"),
        (5, "agents.selectors"),
        (6, "agents"),
        (7, "approvals"),
    ]
