"""Kill-switch tests: the runtime fixtures of tests/agents, and a clean switch cache.

The per-process copy of the engaged switches outlives a test's database; each test starts
with it invalidated and the version key bumped, as after a flip.
"""

from __future__ import annotations

import time

import pytest

from tests.agents.conftest import REFUND  # noqa: F401  (runtime fixtures live in tests/conftest.py)

QUESTION = "What plan is customer C-1002 on?"


@pytest.fixture(autouse=True)
def _fresh_switch_cache():
    from agents import switches

    switches.invalidate_local()
    switches.bump_version()
    yield
    switches.invalidate_local()


def wait_for(predicate, *, timeout: float = 45, every: float = 0.05, workers=(), what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    logs = "\n".join(w.output()[-4000:] for w in workers)
    raise AssertionError(f"timed out waiting for {what or predicate}\n{logs}")
