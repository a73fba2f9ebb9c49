"""integrations sits above the runtime: it plugs its tools into agents' registry when it
loads, and nothing in agents imports it (read from the source with ast)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


def test_agents_never_imports_integrations():
    offending = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "agents").rglob("*.py")
        if any(m == "integrations" or m.startswith("integrations.") for m in _imports(path))
    ]
    assert offending == []
