"""Kill-switch propagation: the database decides, a version key makes the check cheap.

The authoritative state is the ``KillSwitch`` table (``agents.services.switches`` write it,
one transaction each, audited). Workers read it through this module:

- ``engaged()`` -- before every step. A per-process copy of the engaged switches, valid
  while the *version key* has not changed and for at most ``SWITCHES_CACHE_TTL_SECONDS``
  (the fallback, so a missed bump cannot leave a worker stale for long). Reading the
  version is one Redis ``GET`` (``SWITCHES_REDIS_URL``, default ``REDIS_URL``) or, without
  Redis, one read of a small file in ``VAR_DIR`` that web and worker processes share, as
  they share the file cache (replaced atomically on a bump; ~10 us to read, where a
  file-cache ``get`` took ~70). Every flip bumps the version inside
  its transaction and again after commit, so a worker's next check after the commit
  re-reads the table. Inside a transaction (tests, services) the table is read directly.
  A policy activation bumps it too (after commit): ``agents.policy`` keeps the active
  policy row per process against the same key.
- ``tool_gate()`` -- immediately before a tool executes. Read tools use ``engaged()``;
  write tools read the table itself (the authority, a handful of rows on a partial index)
  and *fail closed* when the switch store cannot be reached: a worker that cannot confirm
  it sees every flip must not act.
- The credit ledger is strict on top of that: ``apply_credit`` re-reads the switches in
  its own ledger transaction under the switch lock (``switches_active_for(strict=True)``).

Expiry needs no message: every reader ignores a switch whose ``expires_at`` has passed;
the beat sweep (``switch_expire_due``) then records ``switch.expired`` and re-enqueues
runs a pause had parked.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils import timezone

from agents.models import KillSwitch, SwitchScope

logger = logging.getLogger(__name__)

VERSION_KEY = "acp:switches:version"


class SwitchStoreUnavailable(Exception):
    """The version store (Redis, or the version file without Redis) cannot be read."""


@dataclass
class _Local:
    version: str | None = None
    loaded_at: float = 0.0
    rows: list[KillSwitch] = field(default_factory=list)
    degraded: bool = False  # the last version read failed


_local = _Local()
_lock = threading.Lock()
_clients: dict[str, Any] = {}


# --- the version store ------------------------------------------------------------------


def _redis_url() -> str:
    return getattr(settings, "SWITCHES_REDIS_URL", "") or ""


def _client():
    import redis

    url = _redis_url()
    client = _clients.get(url)
    if client is None:
        timeout = float(getattr(settings, "SWITCHES_REDIS_TIMEOUT_SECONDS", 0.25))
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        _clients[url] = client
    return client


def read_version() -> str:
    """The current version token. Raises SwitchStoreUnavailable when it cannot be read."""
    if _redis_url():
        try:
            raw = _client().get(VERSION_KEY)
        except Exception as exc:  # redis.ConnectionError, TimeoutError, ...
            raise SwitchStoreUnavailable(f"switch store at {_safe_url()} unreachable: {exc}") from None
        return raw.decode() if raw else "0"
    try:
        fd = os.open(_version_file(), os.O_RDONLY)
    except FileNotFoundError:
        return "0"  # never bumped
    except OSError as exc:
        raise SwitchStoreUnavailable(f"switch version file unreadable: {exc}") from None
    try:
        return os.read(fd, 64).decode() or "0"
    except OSError as exc:
        raise SwitchStoreUnavailable(f"switch version file unreadable: {exc}") from None
    finally:
        os.close(fd)


_VERSION_FILES: dict[str, str] = {}


def _version_file() -> str:
    var = str(settings.VAR_DIR)
    path = _VERSION_FILES.get(var)
    if path is None:  # a path per VAR_DIR (tests move it), built once: every step reads it
        path = _VERSION_FILES[var] = os.path.join(var, "switches.version")
    return path


def _write_version_file(token: str) -> None:
    path = Path(_version_file())
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{token}")
    try:
        temporary.write_text(token)
        os.replace(temporary, path)  # atomic: a reader sees the old token or the new one
    except OSError:
        temporary.unlink(missing_ok=True)  # a full disk leaves no half-written temporary
        raise


def bump_version() -> None:
    """Invalidate every process's copy (best effort: the TTL fallback bounds a miss)."""
    token = uuid.uuid4().hex
    invalidate_local()
    try:
        if _redis_url():
            _client().set(VERSION_KEY, token)
        else:
            _write_version_file(token)
    except Exception:
        logger.warning(
            "could not bump the switch version; workers catch up within %ss", cache_ttl(), exc_info=True
        )


def invalidate_local() -> None:
    with _lock:
        _local.version = None
        _local.rows = []
        _local.loaded_at = 0.0


def _safe_url() -> str:
    from urllib.parse import urlparse

    parsed = urlparse(_redis_url())
    return f"{parsed.hostname}:{parsed.port or 6379}"


def cache_ttl() -> float:
    """How long a per-process copy may be trusted without a bump (the fallback)."""
    return float(getattr(settings, "SWITCHES_CACHE_TTL_SECONDS", 2.0))


# --- reads ------------------------------------------------------------------------------


def _from_db() -> list[KillSwitch]:
    from agents.services.switches import switches_engaged

    return switches_engaged()


def _unexpired(rows: list[KillSwitch]) -> list[KillSwitch]:
    now = timezone.now()
    return [s for s in rows if s.expires_at is None or s.expires_at > now]


def engaged(*, fresh: bool = False) -> list[KillSwitch]:
    """The engaged, unexpired switches, cheaply (see the module docstring)."""
    return engaged_with_version(fresh=fresh)[0]


def engaged_with_version(*, fresh: bool = False) -> tuple[list[KillSwitch], str | None]:
    """``engaged()`` and the version token it was checked against (None when the table was
    read without one: ``fresh``, inside a transaction, or the version store unreachable).
    A step hands the token to its policy decision (``agents.policy.decide``), so one read
    of the version key serves both."""
    if fresh or connection.in_atomic_block:
        return _from_db(), None
    try:
        version = read_version()
    except SwitchStoreUnavailable as exc:
        if not _local.degraded:
            logger.warning("%s; reading switches from the database on every check", exc)
        _local.degraded = True
        return _from_db(), None  # the database is the authority: correct, just not cheap
    _local.degraded = False
    now = time.monotonic()
    with _lock:
        if _local.version == version and now - _local.loaded_at < cache_ttl():
            return _unexpired(_local.rows), version
    rows = _from_db()
    with _lock:
        _local.version, _local.rows, _local.loaded_at = version, rows, now
    return rows, version


def tool_gate(*, tool: str, writes: bool, reader=None) -> str | None:
    """Right before a tool executes: a refusal reason, or None to go ahead. ``reader``
    (default: the table) reads the authority for write tools."""
    if writes:
        try:
            read_version()
        except SwitchStoreUnavailable as exc:
            return f"{exc}; write tools fail closed until it is reachable again"
        rows = reader() if reader is not None else _from_db()
    else:
        rows = engaged()
    for s in rows:
        if s.scope == SwitchScope.GLOBAL or (s.scope == SwitchScope.TOOL and s.target == tool):
            return f"kill switch {s} engaged: {s.reason}"
    return None


def paused(agent_slug: str, rows: list[KillSwitch] | None = None) -> KillSwitch | None:
    for s in engaged() if rows is None else rows:
        if s.scope == SwitchScope.AGENT and s.target == agent_slug:
            return s
    return None


# --- blast radius -----------------------------------------------------------------------


def blast_radius(*, scope: str, target: str, window: timedelta = timedelta(hours=1)) -> dict[str, Any]:
    """What engaging ``scope:target`` would affect right now: active runs, parked approvals
    and the recent volume of that tool or intent (``window``)."""
    from agents.approval_subject import requests_of_runs
    from agents.models import Agent, AgentRun, RunStatus, Tier, ToolInvocation
    from approvals.models import ApprovalRequest, ApprovalStatus

    since = timezone.now() - window
    active = AgentRun.objects.filter(status__in=[RunStatus.QUEUED, RunStatus.RUNNING])
    parked = ApprovalRequest.objects.filter(status=ApprovalStatus.PENDING)
    recent_runs = AgentRun.objects.filter(created_at__gte=since)
    recent_calls = ToolInvocation.objects.filter(created_at__gte=since)
    volume_label = "runs started"
    if scope == SwitchScope.TOOL:
        agents = [a.pk for a in Agent.objects.only("allowed_tools") if target in (a.allowed_tools or [])]
        active = active.filter(agent_id__in=agents)
        parked = parked.filter(tool=target)
        volume, volume_label = recent_calls.filter(tool=target).count(), f"{target} calls"
    elif scope == SwitchScope.APPROVAL:
        is_tier = target in Tier.values
        parked = parked.filter(risk_tier=target) if is_tier else parked.filter(tool=target)
        calls = recent_calls.filter(tier=target) if is_tier else recent_calls.filter(tool=target)
        volume, volume_label = calls.count(), f"{target} calls"
    elif scope == SwitchScope.INTENT:
        active = active.filter(intent=target)
        parked = requests_of_runs(parked, AgentRun.objects.filter(intent=target))
        volume, volume_label = recent_runs.filter(intent=target).count(), f"{target} runs started"
    elif scope == SwitchScope.AGENT:
        active = active.filter(agent__slug=target)
        parked = requests_of_runs(parked, AgentRun.objects.filter(agent__slug=target))
        volume, volume_label = recent_runs.filter(agent__slug=target).count(), f"{target} runs started"
    elif scope == SwitchScope.MEMORY:
        active, parked = active.none(), parked.none()
        volume, volume_label = _memory_volume(since), "memory writes"
    else:  # global
        volume = recent_runs.count()
    active = active.distinct()
    return {
        "running": active.filter(status=RunStatus.RUNNING).count(),
        "queued": active.filter(status=RunStatus.QUEUED).count(),
        "parked_approvals": parked.count(),
        "recent_volume": volume,
        "volume_label": volume_label,
        "window_minutes": int(window.total_seconds() // 60),
    }


def _memory_volume(since) -> int:
    from audit.models import AuditEvent

    return AuditEvent.objects.filter(action="memory.written", occurred_at__gte=since).count()
