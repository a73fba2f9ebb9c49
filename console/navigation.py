"""The console's navigation, by role. An entry whose page does not exist yet is skipped."""

from __future__ import annotations

from dataclasses import dataclass

from django.urls import NoReverseMatch, reverse

from console.roles import ADMIN, AUDITOR, OPERATOR, REVIEWER, has_role


@dataclass(frozen=True)
class NavEntry:
    label: str
    url_name: str
    roles: tuple[str, ...]


NAV: tuple[NavEntry, ...] = (
    NavEntry("Dashboard", "dashboard", (OPERATOR, REVIEWER, AUDITOR, ADMIN)),
    NavEntry("Runs", "runs", (OPERATOR,)),
    NavEntry("Approvals", "approvals", (REVIEWER,)),
    NavEntry("Handoffs", "handoffs", (OPERATOR, REVIEWER)),
    NavEntry("Switches", "switches", (OPERATOR,)),
    NavEntry("Audit", "audit", (AUDITOR,)),
)


def visible_entries(user) -> list[dict]:
    entries = []
    for entry in NAV:
        if not has_role(user, *entry.roles):
            continue
        try:
            url = reverse(entry.url_name)
        except NoReverseMatch:
            continue
        entries.append({"label": entry.label, "url": url, "url_name": entry.url_name})
    return entries
