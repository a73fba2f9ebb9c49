"""The per-call shortcuts of a governed tool call keep the guarantees of what they replace.

- Credentials: compact HMAC-SHA256 tokens with a key derived once per secret; a changed
  claim, another secret, another spelling of the signature or garbage is refused, an
  expired or mis-scoped one too (tests/agents/test_broker_and_switches.py), and a key
  rotation (SECRET_KEY_FALLBACKS) keeps verifying.
- The active policy is remembered per process against the switch version key: an
  activation through the services is seen by the very next decision, whatever the TTL;
  the TTL bounds an edit that bypasses the services; an unreachable version store or a
  transaction means reading the row every time. A step reads the key once for its
  switches and its decision, and once more right before the tool.
- ``canonical_json`` (one shared encoder) is byte-identical to ``json.dumps``.
"""

from __future__ import annotations

import base64
import copy
import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from agents import policy, switches
from agents.broker import canonical_json
from agents.credentials import CredentialError, credential_issue, credential_verify
from agents.models import AgentRun, Policy
from agents.services.policies import policy_activate, policy_create

RUN = "2c2a4f6e-0000-4000-8000-000000000000"


def _issue(**kw):
    args = {"tenant_id": "7", "tenant_slug": "acme", "run_id": RUN, "tool": "lookup_subscription"}
    return credential_issue(**{**args, **kw})


# --- credentials ---------------------------------------------------------------------------


def test_credential_round_trip_carries_the_scope():
    claims = credential_verify(_issue(), tool="lookup_subscription")
    assert (claims.tenant_id, claims.tenant_slug, claims.run_id, claims.tool) == (
        "7", "acme", RUN, "lookup_subscription"
    )


def test_a_changed_claim_is_refused():
    payload, signature = _issue().split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["t"], claims["ts"] = "8", "globex"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(CredentialError, match="bad signature"):
        credential_verify(f"{forged}.{signature}", tool="lookup_subscription")


def test_another_spelling_of_the_same_signature_is_refused():
    # 32 bytes are 43 base64 characters; the last one carries 2 unused bits. A decoder
    # ignores them, the text comparison does not.
    token = _issue()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(token[-1])
    twin = token[:-1] + alphabet[last ^ 1]
    assert base64.urlsafe_b64decode(twin.split(".")[1] + "=") == base64.urlsafe_b64decode(
        token.split(".")[1] + "="
    )
    with pytest.raises(CredentialError, match="bad signature"):
        credential_verify(twin, tool="lookup_subscription")


def test_a_token_signed_with_another_secret_is_refused_and_rotation_keeps_working():
    with override_settings(SECRET_KEY="another-secret-key-" + "x" * 40):
        other = _issue()
    with pytest.raises(CredentialError, match="bad signature"):
        credential_verify(other, tool="lookup_subscription")
    token = _issue()
    from django.conf import settings

    with override_settings(SECRET_KEY="the-next-secret-key-" + "y" * 40,
                           SECRET_KEY_FALLBACKS=[settings.SECRET_KEY]):
        assert credential_verify(token, tool="lookup_subscription").tenant_slug == "acme"


@pytest.mark.parametrize("token", ["", "abc", ".", "a.", ".b", "é.é", "a.b.c", None, 42])
def test_garbage_is_refused_as_a_bad_signature(token):
    with pytest.raises(CredentialError, match="bad signature"):
        credential_verify(token, tool="lookup_subscription")


def test_a_django_signing_token_of_the_old_format_is_refused():
    from django.core import signing

    old = signing.dumps({"t": "7", "ts": "acme", "r": RUN, "tool": "lookup_subscription", "exp": 2e9},
                        salt="agents.tool-credential.v1", compress=False)
    with pytest.raises(CredentialError):
        credential_verify(old, tool="lookup_subscription")


# --- canonical JSON ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        {"b": 1, "a": [1.5, "é\u2028", None, True, -0.0, 10**30]},
        {2: "two", 10: "ten"},
        {"when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "amount": Decimal("1.10")},
        {"nested": {"z": {"y": [{"b": 2, "a": 1}]}}, "nan": float("inf")},
        [("tuple", 1)],
        "plain",
    ],
)
def test_canonical_json_is_exactly_json_dumps(value):
    expected = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    assert canonical_json(value) == expected


# --- the active policy, cached against the switch version key ---------------------------------

CTX = policy.ActionContext(
    tool="lookup_subscription", tier="read", arguments={"customer": "C-1002"}, tenant="acme",
    intent="general_question",
)


@pytest.fixture
def fresh_policy_cache():
    policy.invalidate_local()
    switches.bump_version()
    yield
    policy.invalidate_local()
    switches.bump_version()


def _deny_reads() -> dict:
    rules = copy.deepcopy(policy.DEFAULT_RULES)
    rules["tiers"]["read"] = policy.DENY
    return rules


@pytest.mark.django_db(transaction=True)
def test_an_activation_is_seen_by_the_next_decision_whatever_the_ttl(runtime, operator, fresh_policy_cache):
    with override_settings(SWITCHES_CACHE_TTL_SECONDS=3600):
        first = policy.decide(CTX)
        assert (first.effect, first.policy_version) == (policy.ALLOW, 1)
        with CaptureQueriesContext(connection) as queries:
            assert policy.decide(CTX).policy_version == 1
        assert len(queries) == 0  # served from the per-process copy

        v2 = policy_create(actor=operator, rules=_deny_reads(), description="v2", activate=True)
        second = policy.decide(CTX)
        assert (second.effect, second.policy_version) == (policy.DENY, v2.version)

        policy_activate(actor=operator, policy=Policy.objects.get(version=1))
        again = policy.decide(CTX)
        assert (again.effect, again.policy_version) == (policy.ALLOW, 1)


@pytest.mark.django_db(transaction=True)
def test_an_edit_that_bypasses_the_services_is_bounded_by_the_ttl(runtime, fresh_policy_cache):
    assert policy.decide(CTX).policy_version == 1
    Policy.objects.update(is_active=False)  # no bump
    with override_settings(SWITCHES_CACHE_TTL_SECONDS=3600):
        assert policy.decide(CTX).policy_version == 1  # the fallback, as for the switches
    with override_settings(SWITCHES_CACHE_TTL_SECONDS=0):
        denied = policy.decide(CTX)
    assert denied.effect == policy.DENY and "no active policy" in denied.reason


@pytest.mark.django_db(transaction=True)
@override_settings(SWITCHES_REDIS_URL="redis://127.0.0.1:1/0", SWITCHES_REDIS_TIMEOUT_SECONDS=0.2,
                   SWITCHES_CACHE_TTL_SECONDS=3600)
def test_without_the_version_store_every_decision_reads_the_row(runtime, fresh_policy_cache):
    assert policy.decide(CTX).policy_version == 1
    Policy.objects.update(is_active=False)  # no bump, and none could be read anyway
    denied = policy.decide(CTX)
    assert denied.effect == policy.DENY and "no active policy" in denied.reason


@pytest.mark.django_db(transaction=True)
def test_a_tool_step_reads_the_version_key_once_for_its_switches_and_its_policy(
    runtime, start_run, fresh_policy_cache, monkeypatch
):
    from agents import runtime as step_loop

    run = start_run("What plan is customer C-1002 on?")
    lease, run = step_loop._claim(run_pk=run.pk, worker="pytest")
    assert step_loop._step(run, lease) is None  # the model step: a lookup pending
    run = AgentRun.objects.select_related("agent", "tenant").get(pk=run.pk)
    assert run.state["pending"]["tool"] == "lookup_subscription"
    reads = []
    real = switches.read_version
    monkeypatch.setattr(switches, "read_version", lambda: reads.append(1) or real())
    assert step_loop._step(run, lease) is None  # the lookup
    assert run.steps.filter(kind="tool").get().invocation.state == "succeeded"
    assert len(reads) == 2  # at the step's start (switches, then policy), and right before the tool


def test_inside_a_transaction_the_row_is_read(runtime, fresh_policy_cache):
    # pytest-django's ``db`` runs the test in a transaction: the caller may have just
    # changed the table, so the copy is not used.
    with override_settings(SWITCHES_CACHE_TTL_SECONDS=3600):
        assert policy.decide(CTX).policy_version == 1
        Policy.objects.update(is_active=False)
        assert "no active policy" in policy.decide(CTX).reason
