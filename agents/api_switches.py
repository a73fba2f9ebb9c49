"""Kill switches over the API: list, flip, preview the blast radius.

Operators (and admins) flip; auditors may also read. Anyone else gets 403. The target of
the global switch is ``-`` (or ``all``). Schemas live here: they serve this router only.
"""

from __future__ import annotations

from datetime import datetime

from django.http import HttpRequest
from ninja import Router, Schema

from agents.models import KillSwitch, SwitchScope
from agents.services.switches import GLOBAL_TARGETS, switch_set
from agents.switches import blast_radius
from console.errors import InvalidInput, PermissionDenied
from console.roles import ADMIN, AUDITOR, OPERATOR, has_role

router = Router(tags=["switches"])


class SwitchOut(Schema):
    scope: str
    target: str
    engaged: bool
    effective: bool  # engaged and not past its expiry
    reason: str
    changed_by: str
    changed_at: datetime | None
    expires_at: datetime | None


class SwitchIn(Schema):
    engaged: bool
    reason: str = ""
    expires_at: datetime | None = None


class BlastRadiusOut(Schema):
    scope: str
    target: str
    running: int
    queued: int
    parked_approvals: int
    recent_volume: int
    volume_label: str
    window_minutes: int


def _require(user, *roles: str, doing: str) -> None:
    if getattr(user, "service_account", None) is not None or not has_role(user, *roles):
        raise PermissionDenied(f"{doing} needs the operator role.")


def _out(switch: KillSwitch) -> dict:
    from django.utils import timezone

    effective = switch.engaged and (switch.expires_at is None or switch.expires_at > timezone.now())
    return {
        "scope": switch.scope,
        "target": switch.target or "-",
        "engaged": switch.engaged,
        "effective": effective,
        "reason": switch.reason,
        "changed_by": switch.changed_by_label,
        "changed_at": switch.changed_at,
        "expires_at": switch.expires_at,
    }


def _scope(scope: str) -> str:
    if scope not in SwitchScope.values:
        raise InvalidInput(f"Unknown switch scope {scope!r}; use one of {', '.join(SwitchScope.values)}.")
    return scope


def _target(scope: str, target: str) -> str:
    return "" if scope == SwitchScope.GLOBAL and target in GLOBAL_TARGETS else target


@router.get("", response=list[SwitchOut], summary="All switches and their state")
def list_switches(request: HttpRequest):
    _require(request.auth, OPERATOR, ADMIN, AUDITOR, doing="Reading kill switches")
    return [_out(s) for s in KillSwitch.objects.order_by("scope", "target")]


@router.put(
    "/{scope}/{target}",
    response=SwitchOut,
    summary='Engage or release: {"engaged", "reason", "expires_at"?}; global target is "-"',
)
def put_switch(request: HttpRequest, scope: str, target: str, payload: SwitchIn):
    _require(request.auth, OPERATOR, ADMIN, doing="Flipping a kill switch")
    scope = _scope(scope)
    switch = switch_set(
        actor=request.auth,
        scope=scope,
        target=_target(scope, target),
        engaged=payload.engaged,
        reason=payload.reason,
        expires_at=payload.expires_at,
    )
    return _out(switch)


@router.get(
    "/{scope}/{target}/blast-radius",
    response=BlastRadiusOut,
    summary="What engaging this switch would affect right now",
)
def get_blast_radius(request: HttpRequest, scope: str, target: str):
    _require(request.auth, OPERATOR, ADMIN, doing="Previewing a kill switch")
    scope = _scope(scope)
    from agents.services.switches import switch_target_validate

    target = switch_target_validate(scope, _target(scope, target))
    return {"scope": scope, "target": target or "-", **blast_radius(scope=scope, target=target)}
