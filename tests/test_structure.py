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


APPS = ("agents", "approvals", "audit", "console", "integrations", "support")


def _module_names(path: Path) -> tuple[str, str]:
    """(module, package) of a source file, dotted."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    return module, ".".join(parts[:-1])


def _is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def private_imports(source: str, *, package: str, ours=APPS) -> list[tuple[int, str]]:
    """(line, name) of every private name (one leading underscore) that ``source`` takes
    from another module of ours: ``from x import _y``, and ``x._y`` where ``x`` names a
    module of ours (``import x.y``, ``from x import y`` of a module). Names on classes
    (``Model._meta``) and dunders are not counted."""
    tree = ast.parse(source)
    found, modules = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            if module.split(".")[0] not in ours:
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append((node.lineno, f"{module}.{alias.name}"))
                elif _is_module(f"{module}.{alias.name}"):
                    modules[alias.asname or alias.name] = f"{module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in ours:
                    bound = alias.asname or alias.name.split(".")[0]
                    modules[bound] = alias.name if alias.asname else bound
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_") or node.attr.startswith("__"):
            continue
        chain, value = [], node.value
        while isinstance(value, ast.Attribute):
            chain.insert(0, value.attr)
            value = value.value
        if isinstance(value, ast.Name) and value.id in modules:
            owner = ".".join([modules[value.id], *chain])
            if _is_module(owner):  # ``mod._x``, not ``mod.Class._meta``
                found.append((node.lineno, f"{owner}.{node.attr}"))
    return found


def test_no_module_takes_another_modules_private_name():
    """A leading underscore means "this module only" (STYLE.md): what two modules share is
    public where it belongs. Tests may reach into a module; the apps may not."""
    offending = []
    for app in APPS:
        for path in sorted((ROOT / app).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            _, package = _module_names(path)
            for line, name in private_imports(path.read_text(), package=package):
                offending.append(f"{path.relative_to(ROOT)}:{line} takes {name}")
    assert offending == []


def test_the_private_name_check_sees_from_imports_and_attributes_of_modules():
    source = (
        "from agents.services.switches import _lock_switches, switch_set\n"
        "from agents import runtime, policy as pol\n"
        "import agents.broker\n"
        "from agents.models import AgentRun\n"
        "from .policy import _rules\n"
        "def f():\n"
        "    runtime._step(None, '')\n"
        "    pol._cached, agents.broker._start, AgentRun._meta, runtime.__name__\n"
        "    from django.db import _private\n"
    )
    assert sorted(private_imports(source, package="agents")) == [
        (1, "agents.services.switches._lock_switches"),
        (5, "agents.policy._rules"),
        (7, "agents.runtime._step"),
        (8, "agents.broker._start"),
        (8, "agents.policy._cached"),
    ]
