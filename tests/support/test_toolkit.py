"""The support toolkit plugs into the runtime from above: it registers its tools and its
policy facts when the app loads, and no module of ``agents`` imports it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from agents.policy import action_facts
from agents.tools import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
TOOLS = {"lookup_subscription", "search_tickets", "draft_reply", "apply_credit", "update_account_status"}


def test_the_toolkit_registers_its_tools_when_the_app_loads():
    assert TOOLS <= set(REGISTRY)
    assert {REGISTRY[name].func.__module__ for name in TOOLS} == {"support.tools"}


@pytest.mark.django_db
def test_customer_scope_says_whose_customer_a_code_names(runtime, acme, globex):
    def scope(tenant, arguments):
        return action_facts(tenant_id=tenant.pk, arguments=arguments).get("customer_scope")

    assert scope(acme, {"customer": "C-1001"}) == "own_tenant"
    assert scope(acme, {"customer": "G-2001"}) == "other_tenant"
    assert scope(globex, {"customer": "G-2001"}) == "own_tenant"
    assert scope(acme, {"customer": "C-9999"}) == "unknown"
    assert action_facts(tenant_id=acme.pk, arguments={"query": "refund"}) == {}
    assert action_facts(tenant_id=acme.pk, arguments={"customer": ["C-1001"]}) == {}


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_the_runtime_imports_nothing_of_the_toolkit():
    offenders = [
        f"{path.relative_to(ROOT)}: {module}"
        for path in sorted((ROOT / "agents").rglob("*.py"))
        for module in _imported_modules(path)
        if module == "support" or module.startswith("support.")
    ]
    assert offenders == []
