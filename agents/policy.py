"""The policy engine: rules as data in the active ``Policy`` row, one decision per action.

A decision is ``allow``, ``deny`` (with a reason) or ``require_approval`` (a queue and the
number of distinct approvals). Every decision carries the policy version it used. A missing,
invalid or unreadable policy fails closed: the action is denied.

Rules format (validated with JSON Schema, ``RULES_SCHEMA``)::

    {"tiers": {"read": "allow", "write_low": "allow", "write_high": "require_approval"},
     "tier_queue": "escalations",
     "rules": [  # ordered; the first rule whose conditions all hold decides
       {"id": "no-cross-tenant", "effect": "deny",
        "when": [{"fact": "customer_scope", "op": "eq", "value": "other_tenant"}],
        "reason": "A run never acts on another tenant's customer."},
       {"id": "credit-over-1000", "tool": "apply_credit", "effect": "deny",
        "when": [{"arg": "amount_cents", "op": "gt", "value": 100000}], "reason": "..."},
       {"id": "credit-dual", "tool": "apply_credit", "effect": "require_approval",
        "queue": "billing-credits", "approvals": 2,
        "when": [{"arg": "amount_cents", "op": "gte", "value": 10000}]},
       ...]}

A rule may also match on ``tool`` (name or list), ``tier``, ``tenant`` (slugs) and
``intent``. Kill switches of scope ``approval`` (target a tool name or a tier) turn an
``allow`` into ``require_approval``: force approval.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jsonschema

logger = logging.getLogger(__name__)

ALLOW = "allow"
DENY = "deny"
REQUIRE_APPROVAL = "require_approval"
EFFECTS = (ALLOW, DENY, REQUIRE_APPROVAL)

_CONDITION = {
    "type": "object",
    "required": ["op", "value"],
    "properties": {
        "arg": {"type": "string"},
        "fact": {"type": "string"},
        "op": {"enum": ["eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in"]},
        "value": {},
    },
    "oneOf": [{"required": ["arg"]}, {"required": ["fact"]}],
    # "in" takes a list (a string would match its substrings: "other" in "other_tenant"),
    # and a threshold a number (a string would fail every decision closed at run time).
    "allOf": [
        {"if": {"properties": {"op": {"enum": ["in", "not_in"]}}},
         "then": {"properties": {"value": {"type": "array"}}}},
        {"if": {"properties": {"op": {"enum": ["gt", "gte", "lt", "lte"]}}},
         "then": {"properties": {"value": {"type": "number"}}}},
    ],
}
_STR_OR_LIST = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
RULES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["tiers", "rules"],
    "additionalProperties": False,
    "properties": {
        "tiers": {
            "type": "object",
            "required": ["read", "write_low", "write_high"],
            "additionalProperties": False,
            "properties": {tier: {"enum": list(EFFECTS)} for tier in ("read", "write_low", "write_high")},
        },
        "tier_queue": {"type": "string"},
        "rules": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "effect"],
                "additionalProperties": False,
                "properties": {
                    "id": {"type": "string", "minLength": 1, "maxLength": 64},
                    "effect": {"enum": list(EFFECTS)},
                    "tool": _STR_OR_LIST,
                    "tier": _STR_OR_LIST,
                    "tenant": _STR_OR_LIST,
                    "intent": _STR_OR_LIST,
                    "when": {"type": "array", "items": _CONDITION},
                    "queue": {"type": "string"},
                    "approvals": {"enum": [1, 2]},
                    "reason": {"type": "string"},
                },
                "allOf": [
                    {
                        "if": {"properties": {"effect": {"const": REQUIRE_APPROVAL}}},
                        "then": {"required": ["queue"]},
                    }
                ],
            },
        },
    },
}

DEFAULT_RULES: dict[str, Any] = {
    "tiers": {"read": ALLOW, "write_low": ALLOW, "write_high": REQUIRE_APPROVAL},
    "tier_queue": "escalations",
    "rules": [
        {
            "id": "no-cross-tenant",
            "effect": DENY,
            "when": [{"fact": "customer_scope", "op": "eq", "value": "other_tenant"}],
            "reason": "A run never acts on another tenant's customer.",
        },
        {
            "id": "credit-above-1000-denied",
            "tool": "apply_credit",
            "effect": DENY,
            "when": [{"arg": "amount_cents", "op": "gt", "value": 100_000}],
            "reason": "Credits above $1,000 are denied; a person must handle them outside the agent.",
        },
        {
            "id": "credit-from-100-two-leads",
            "tool": "apply_credit",
            "effect": REQUIRE_APPROVAL,
            "queue": "billing-credits",
            "approvals": 2,
            "when": [{"arg": "amount_cents", "op": "gte", "value": 10_000}],
            "reason": "Credits from $100 need two distinct support leads.",
        },
        {
            "id": "credit-needs-one-lead",
            "tool": "apply_credit",
            "effect": REQUIRE_APPROVAL,
            "queue": "billing-credits",
            "approvals": 1,
            "reason": "Credits need one support lead's approval.",
        },
        {
            "id": "account-status-needs-review",
            "tool": "update_account_status",
            "effect": REQUIRE_APPROVAL,
            "queue": "account-changes",
            "approvals": 1,
            "reason": "Account status changes need a reviewer on Account changes.",
        },
    ],
}


@dataclass(frozen=True)
class ActionContext:
    """Everything a rule may look at. ``facts`` come from the database, never from the
    model: what the registered fact providers say about the action (``action_facts``; e.g.
    the support toolkit's ``customer_scope``: own_tenant / other_tenant / unknown)."""

    tool: str
    tier: str
    arguments: dict[str, Any]
    tenant: str
    intent: str
    facts: dict[str, Any] = field(default_factory=dict)
    forced_approval: tuple[str, ...] = ()  # reasons of engaged approval switches


# The systems the tools act on know facts the runtime does not (whose customer a code
# names). A provider takes (tenant id, arguments) and returns the facts it knows, {} when
# the action is none of its business; apps register theirs when they load (support.apps).
FactProvider = Callable[[Any, dict[str, Any]], dict[str, Any]]
FACT_PROVIDERS: list[FactProvider] = []


def register_fact_provider(provider: FactProvider) -> None:
    """Add ``provider`` to the facts every decision sees (once, however often called)."""
    if provider not in FACT_PROVIDERS:
        FACT_PROVIDERS.append(provider)


def action_facts(*, tenant_id: Any, arguments: dict[str, Any]) -> dict[str, Any]:
    """The facts of one proposed action in tenant ``tenant_id``, from every provider."""
    facts: dict[str, Any] = {}
    for provider in FACT_PROVIDERS:
        facts.update(provider(tenant_id, arguments))
    return facts


@dataclass(frozen=True)
class Decision:
    effect: str
    reason: str
    policy_version: int | None
    rule_id: str = ""
    queue: str = ""
    approvals_required: int = 0

    @property
    def allowed(self) -> bool:
        return self.effect == ALLOW

    def as_dict(self) -> dict[str, Any]:
        return {
            "effect": self.effect,
            "reason": self.reason,
            "policy_version": self.policy_version,
            "rule": self.rule_id,
            "queue": self.queue,
            "approvals_required": self.approvals_required,
        }


class PolicyInvalid(ValueError):
    pass


_RULES_VALIDATOR = jsonschema.Draft202012Validator(RULES_SCHEMA)
# Validation results by the rules' content hash: a policy is validated once per process,
# and a row edited behind the service's back is validated again (its hash changes).
_VALIDATED: dict[str, str | None] = {}


def validate_rules(rules: Any) -> None:
    """Raise PolicyInvalid saying what is wrong with a rules document."""
    key = hashlib.sha256(json.dumps(rules, sort_keys=True, default=str).encode()).hexdigest()
    if key not in _VALIDATED:
        error = jsonschema.exceptions.best_match(_RULES_VALIDATOR.iter_errors(rules))
        if error is None:
            _VALIDATED[key] = None
        else:
            where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
            _VALIDATED[key] = f"policy rules invalid at {where}: {error.message}"
        if len(_VALIDATED) > 256:
            _VALIDATED.clear()
    if _VALIDATED[key] is not None:
        raise PolicyInvalid(_VALIDATED[key])


def _matches_value(spec: Any, value: str) -> bool:
    if spec is None:
        return True
    return value in ([spec] if isinstance(spec, str) else spec)


def _holds(cond: dict[str, Any], ctx: ActionContext) -> bool:
    if "arg" in cond:
        present, actual = cond["arg"] in ctx.arguments, ctx.arguments.get(cond["arg"])
    else:
        present, actual = cond["fact"] in ctx.facts, ctx.facts.get(cond["fact"])
    op, expected = cond["op"], cond["value"]
    if op == "eq":
        return present and actual == expected
    if op == "ne":
        return not present or actual != expected
    if op == "in":
        return present and actual in expected
    if op == "not_in":
        return not present or actual not in expected
    if not present or not isinstance(actual, (int, float)) or isinstance(actual, bool):
        # A threshold on a missing or non-numeric value holds: the stricter rule applies.
        return True
    return {
        "gt": actual > expected,
        "gte": actual >= expected,
        "lt": actual < expected,
        "lte": actual <= expected,
    }[op]


def evaluate(rules: dict[str, Any], version: int | None, ctx: ActionContext) -> Decision:
    """Pure evaluation of one rules document (already validated)."""
    for rule in rules["rules"]:
        if not (
            _matches_value(rule.get("tool"), ctx.tool)
            and _matches_value(rule.get("tier"), ctx.tier)
            and _matches_value(rule.get("tenant"), ctx.tenant)
            and _matches_value(rule.get("intent"), ctx.intent)
        ):
            continue
        if not all(_holds(cond, ctx) for cond in rule.get("when", [])):
            continue
        decision = Decision(
            effect=rule["effect"],
            reason=rule.get("reason") or f"rule {rule['id']}",
            policy_version=version,
            rule_id=rule["id"],
            queue=rule.get("queue", ""),
            approvals_required=rule.get("approvals", 1) if rule["effect"] == REQUIRE_APPROVAL else 0,
        )
        break
    else:
        effect = rules["tiers"][ctx.tier]
        decision = Decision(
            effect=effect,
            reason=f"default for tier {ctx.tier}",
            policy_version=version,
            rule_id=f"tier:{ctx.tier}",
            queue=rules.get("tier_queue", "") if effect == REQUIRE_APPROVAL else "",
            approvals_required=1 if effect == REQUIRE_APPROVAL else 0,
        )
    if decision.effect == ALLOW and ctx.forced_approval:
        decision = Decision(
            effect=REQUIRE_APPROVAL,
            reason="approval forced by kill switch: " + "; ".join(ctx.forced_approval),
            policy_version=version,
            rule_id="switch:approval",
            queue=rules.get("tier_queue", "") or "escalations",
            approvals_required=1,
        )
    return decision


# Parsed and validated rules by the active row's raw JSON text: each distinct document is
# parsed and schema-validated once per process.
_LOADED: dict[str, tuple[dict[str, Any], str | None]] = {}

# The active row as last read, with the switch version token read just before it and when
# (see _current_row).
_ACTIVE: tuple[str, float, tuple[int, Any] | None] | None = None


# Served by the partial unique index exactly_one_active_policy (agents.Policy).
_ACTIVE_SQL = 'SELECT version, rules FROM "agents_policy" WHERE is_active = %s ORDER BY version DESC LIMIT 1'


def _active_row() -> tuple[int, Any] | None:
    """(version, rules as the driver returns them) of the active policy: one lean query,
    no ORM compilation (it runs before every tool call)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(_ACTIVE_SQL, [True])
        return cursor.fetchone()


def _current_row(token: str | None = None) -> tuple[int, Any] | None:
    """The active row for a decision, without a database round trip when nothing changed.

    A policy is activated only through ``agents.services.policies`` (``policy_create(activate=True)``,
    ``policy_activate``), which bumps the kill switches' version key (``agents.switches``,
    one Redis ``GET`` or one read of the shared file cache) once the activation has
    committed. So the row read under version token T stays the active row for as long as
    the key still reads T: every decision reads the key and reuses the row only when it is
    unchanged, so an activation is seen by the next decision of every process, as when the
    row itself was read. A step loop decision passes ``token``, the value its step read a
    moment earlier for the kill switches (``switches.engaged_with_version``, with no wait
    between the two but the tenant facts): one read of the key per step, and the decision
    is ordered at that read. The row is always read
    after the token, so a row cached under T is never older than T. Fallbacks, as for the
    switches: the row is re-read at least every ``SWITCHES_CACHE_TTL_SECONDS`` (bounds a
    missed bump and an edit of the table that bypasses the services), on every decision
    while the version store cannot be read, and inside a transaction (the caller may have
    just changed the table).
    """
    global _ACTIVE
    from django.db import connection

    from agents import switches

    if connection.in_atomic_block:
        return _active_row()
    if token is None:
        try:
            token = switches.read_version()
        except switches.SwitchStoreUnavailable:
            return _active_row()  # switches log the outage; the database is the authority
    now = time.monotonic()
    cached = _ACTIVE
    if cached is not None and cached[0] == token and now - cached[1] < switches.cache_ttl():
        return cached[2]
    row = _active_row()
    _ACTIVE = (token, now, None if row is None else (row[0], row[1]))
    return row


def invalidate_local() -> None:
    """Forget the cached active row (the next decision reads it)."""
    global _ACTIVE
    _ACTIVE = None


def _load(raw: Any) -> tuple[dict[str, Any], str | None]:
    """(rules, problem or None) for a rules document as read from the database."""
    text = raw if isinstance(raw, str) else json.dumps(raw, sort_keys=True, default=str)
    loaded = _LOADED.get(text)
    if loaded is None:
        try:
            rules = json.loads(text)
            validate_rules(rules)
            loaded = (rules, None)
        except (ValueError, PolicyInvalid) as exc:
            loaded = ({}, str(exc))
        if len(_LOADED) > 64:
            _LOADED.clear()
        _LOADED[text] = loaded
    return loaded


def active_policy() -> tuple[int | None, dict[str, Any] | None]:
    """(version, rules) of the active policy, or (None, None). The rules dict is shared
    per process: read it, never mutate it."""
    row = _active_row()
    if row is None:
        return None, None
    rules, _ = _load(row[1])
    return row[0], rules


def decide(ctx: ActionContext, *, switch_version: str | None = None) -> Decision:
    """The decision for one proposed action under the active policy. Fails closed.
    ``switch_version``: the version token the caller's step has just read (``_current_row``)."""
    try:
        row = _current_row(switch_version)
    except Exception as exc:  # the policy store is unreachable: fail closed
        logger.exception("policy store unreachable")
        return Decision(
            DENY,
            f"policy store unreachable ({type(exc).__name__}); failing closed",
            None,
            rule_id="fail-closed",
        )
    if row is None or row[1] is None:
        return Decision(
            DENY,
            "no active policy; failing closed. Activate one (seed_demo does).",
            None,
            rule_id="fail-closed",
        )
    version = row[0]
    try:
        rules, problem = _load(row[1])
        if problem is not None:
            raise PolicyInvalid(problem)
        return evaluate(rules, version, ctx)
    except Exception as exc:
        logger.error("policy v%s unusable: %s", version, exc)
        return Decision(
            DENY, f"policy v{version} is invalid ({exc}); failing closed", version, rule_id="fail-closed"
        )
