"""Reads: retrieval over a tenant's documents, memory, conversation and scratchpad.

Retrieval (``context_retrieve``):
- the tenant filter is in the query code of every retriever; the prompt never carries it;
- results are bounded (``MAX_LIMIT`` hits, bodies cut at ``MAX_BODY_CHARS`` with a marker);
- nothing found is a result with ``empty=True`` and a reason, not an error;
- freshness: a hit from a stale *critical* source raises ``StaleSource`` (fail closed,
  naming the source, its owner and its age); a stale non-critical source degrades: its hits
  carry ``stale=True`` and the label "stale".
The search itself is behind the ``Retriever`` protocol: ``FullTextRetriever`` (PostgreSQL
full-text search, or a LIKE/token-overlap fallback on SQLite) today, an embedding index later.
"""

from __future__ import annotations

import logging
import operator
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import reduce
from typing import Any, Protocol

from django.contrib.postgres.search import SearchQuery, SearchRank
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from agents.knowledge.models import (
    ConversationMessage,
    Document,
    MemoryFreeze,
    MemoryItem,
    ScratchpadEntry,
    Source,
)
from console.errors import DomainError, InvalidInput

logger = logging.getLogger(__name__)

DEFAULT_LIMIT = 5
MAX_LIMIT = 10
MAX_BODY_CHARS = 1200
TRUNCATION_MARKER = " [...truncated]"
MAX_QUERY_CHARS = 500
MAX_TERMS = 24
SQLITE_CANDIDATES = 200
STALE = "stale"

_WORD_RE = re.compile(r"[^\W_]+", re.UNICODE)
_STOPWORDS = frozenset(
    "a an and are as at be but by can do for from has have i if in is it its me my no not of on "
    "or our please so that the their them then there this to was we were what when which who why "
    "will with you your".split()
)


class StaleSource(DomainError):
    """A critical source is older than its maximum age: retrieval fails closed."""

    code = "stale_source"
    status = 409
    failure_class = "context"

    def __init__(self, source: Source, *, age: timedelta | None):
        self.source_name = source.name
        self.owner = source.owner
        self.age = age
        self.max_age = source.max_age
        age_text = "never refreshed" if age is None else f"last refreshed {_human(age)} ago"
        super().__init__(
            f"Knowledge source {source.name!r} (owner: {source.owner}) is stale: {age_text}, its "
            f"maximum age is {_human(source.max_age)}. It is critical, so the answer is not given "
            f"from it; ask {source.owner} to refresh it."
        )


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds >= 86400:
        return f"{seconds // 86400} day(s)"
    if seconds >= 3600:
        return f"{seconds // 3600} hour(s)"
    return f"{max(seconds // 60, 0)} minute(s)"


def source_age(source: Source, now: datetime) -> timedelta | None:
    return None if source.last_refreshed_at is None else now - source.last_refreshed_at


def source_is_stale(source: Source, now: datetime) -> bool:
    age = source_age(source, now)
    return age is None or age > source.max_age


# --- results ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    document_id: str
    source: str
    source_kind: str
    title: str
    body: str
    truncated: bool
    score: float
    updated_at: datetime
    stale: bool = False
    labels: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"document_id": self.document_id, "source": self.source, "source_kind": self.source_kind,
                "title": self.title, "body": self.body, "truncated": self.truncated,
                "score": round(self.score, 4), "updated_at": self.updated_at.isoformat(),
                "stale": self.stale, "labels": list(self.labels)}


@dataclass(frozen=True)
class RetrievalResult:
    query: str
    hits: tuple[Hit, ...] = ()
    backend: str = ""
    reason: str = ""  # why it is empty, when it is
    stale_sources: tuple[str, ...] = field(default=())

    @property
    def empty(self) -> bool:
        return not self.hits

    def as_trace(self) -> dict[str, Any]:
        """What the run's trace records: ids, titles, labels (not the bodies)."""
        return {"query": self.query, "empty": self.empty, "reason": self.reason, "backend": self.backend,
                "stale_sources": list(self.stale_sources),
                "hits": [{"document_id": h.document_id, "source": h.source, "title": h.title,
                          "score": round(h.score, 4), "labels": list(h.labels)} for h in self.hits]}


# --- retrievers ---------------------------------------------------------------------------


class Retriever(Protocol):
    """Finds a tenant's documents for a query. Implementations MUST filter by ``tenant_id``
    in their own query; ``context_retrieve`` adds bounds and freshness on top."""

    name: str

    def search(self, *, tenant_id: Any, query: str, terms: list[str], limit: int,
               source_ids: list[Any] | None = None) -> list[tuple[Document, float]]: ...


def query_terms(query: str) -> list[str]:
    seen: dict[str, None] = {}
    for word in _WORD_RE.findall(query.lower()):
        if len(word) >= 2 and word not in _STOPWORDS:
            seen.setdefault(word, None)
    return list(seen)[:MAX_TERMS]


class FullTextRetriever:
    """PostgreSQL full-text search (GIN index on ``search_vector``, OR of the query's words,
    ranked by ``ts_rank``); on SQLite, a LIKE prefilter and a token-overlap score."""

    @property
    def name(self) -> str:
        return "postgres_fts" if connection.vendor == "postgresql" else "like_overlap"

    def search(self, *, tenant_id, query, terms, limit, source_ids=None):
        documents = Document.objects.filter(tenant_id=tenant_id).select_related("source")
        if source_ids is not None:
            documents = documents.filter(source_id__in=source_ids)
        if connection.vendor == "postgresql":
            return self._postgres(documents, terms, limit)
        return self._fallback(documents, terms, limit)

    @staticmethod
    def _postgres(documents, terms, limit):
        # One plain query per word, OR-ed: a question rarely shares every word with the answer.
        search = reduce(operator.or_, [SearchQuery(term, config="english") for term in terms])
        rows = (documents.filter(search_vector=search)
                .annotate(rank=SearchRank(F("search_vector"), search))
                .order_by("-rank", "-updated_at")[:limit])
        return [(doc, float(doc.rank)) for doc in rows]

    @staticmethod
    def _fallback(documents, terms, limit):
        condition = reduce(operator.or_, [Q(title__icontains=t) | Q(body__icontains=t) for t in terms])
        scored = []
        for doc in documents.filter(condition).order_by("-updated_at")[:SQLITE_CANDIDATES]:
            title, body = doc.title.lower(), doc.body.lower()
            score = sum(2.0 * (term in title) + 1.0 * (term in body) for term in terms)
            scored.append((doc, score / (2 * len(terms) + 1)))
        scored.sort(key=lambda pair: (-pair[1], -pair[0].updated_at.timestamp()))
        return scored[:limit]


def _truncate(body: str, limit: int) -> tuple[str, bool]:
    if len(body) <= limit:
        return body, False
    cut = body[:limit]
    space = cut.rfind(" ")
    if space > limit * 0.8:
        cut = cut[:space]
    return cut.rstrip() + TRUNCATION_MARKER, True


def context_retrieve(
    *,
    tenant: Any,
    query: str,
    limit: int = DEFAULT_LIMIT,
    sources: list[str] | None = None,
    retriever: Retriever | None = None,
    now: datetime | None = None,
    actor: Any = None,
    trace_id: str = "",
) -> RetrievalResult:
    """The tenant's documents relevant to ``query``, at most ``limit`` (capped at MAX_LIMIT).

    ``sources`` restricts to sources by name. Raises ``StaleSource`` when a hit comes from a
    stale critical source; marks hits of stale non-critical sources. With ``actor`` given, a
    stale source is also audited (``context.stale``) in the caller's transaction.
    """
    tenant_id = getattr(tenant, "pk", tenant)
    if not tenant_id:
        raise InvalidInput("context_retrieve needs a tenant: retrieval is always scoped to one tenant.")
    if not isinstance(query, str):
        raise InvalidInput("The retrieval query must be text.")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise InvalidInput(f"limit must be a positive integer (at most {MAX_LIMIT}); got {limit!r}.")
    limit = min(limit, MAX_LIMIT)
    query = query.strip()[:MAX_QUERY_CHARS]
    retriever = retriever or FullTextRetriever()
    terms = query_terms(query)
    if not terms:
        return RetrievalResult(query=query, backend=retriever.name,
                               reason="the query has no searchable words")
    source_ids = None
    if sources is not None:
        source_ids = list(Source.objects.filter(tenant_id=tenant_id, name__in=sources)
                          .values_list("id", flat=True))
    pairs = retriever.search(tenant_id=tenant_id, query=query, terms=terms, limit=limit,
                             source_ids=source_ids)
    # Defence in depth: a retriever that forgot the tenant filter still cannot leak.
    pairs = [(doc, score) for doc, score in pairs if str(doc.tenant_id) == str(tenant_id)][:limit]
    if not pairs:
        return RetrievalResult(query=query, backend=retriever.name,
                               reason="no document of this tenant matched the query")

    now = now or timezone.now()
    stale: dict[Any, Source] = {}
    for doc, _ in pairs:
        if doc.source_id not in stale and source_is_stale(doc.source, now):
            stale[doc.source_id] = doc.source
    for source in stale.values():
        _note_stale(source, now=now, actor=actor, tenant_id=tenant_id, trace_id=trace_id)
    critical = [source for source in stale.values() if source.critical]
    if critical:
        raise StaleSource(critical[0], age=source_age(critical[0], now))

    hits = []
    for doc, score in pairs:
        body, truncated = _truncate(doc.body, MAX_BODY_CHARS)
        is_stale = doc.source_id in stale
        hits.append(Hit(
            document_id=str(doc.pk), source=doc.source.name, source_kind=doc.source.kind,
            title=doc.title, body=body, truncated=truncated, score=score, updated_at=doc.updated_at,
            stale=is_stale, labels=(STALE,) if is_stale else (),
        ))
    return RetrievalResult(query=query, hits=tuple(hits), backend=retriever.name,
                           stale_sources=tuple(sorted(source.name for source in stale.values())))


def _note_stale(source: Source, *, now, actor, tenant_id, trace_id) -> None:
    age = source_age(source, now)
    logger.warning("knowledge source %s (tenant %s, owner %s) is stale (age %s, max %s)%s",
                   source.name, tenant_id, source.owner, age, source.max_age,
                   "; failing closed" if source.critical else "")
    if actor is None:
        return
    from audit.services import audit_record

    with transaction.atomic():
        audit_record(
            actor=actor, action="context.stale", tenant=tenant_id, object_type="knowledge.source",
            object_id=source.pk, trace_id=trace_id,
            payload={"source": source.name, "owner": source.owner, "critical": source.critical,
                     "age_seconds": None if age is None else int(age.total_seconds()),
                     "max_age_seconds": int(source.max_age.total_seconds()),
                     "outcome": "failed_closed" if source.critical else "degraded"},
        )


# --- memory reads -------------------------------------------------------------------------


def memory_freeze_for(*, tenant: Any, agent: str) -> MemoryFreeze | None:
    """The freeze covering (tenant, agent), if any: its own, the tenant's, the agent's
    everywhere, or the global one."""
    tenant_id = getattr(tenant, "pk", tenant)
    keys = {MemoryFreeze.key_for(tenant_id, agent), MemoryFreeze.key_for(tenant_id, ""),
            MemoryFreeze.key_for(None, agent), MemoryFreeze.key_for(None, "")}
    return MemoryFreeze.objects.filter(scope_key__in=keys).order_by("created_at").first()


@dataclass(frozen=True)
class MemoryView:
    items: tuple[dict[str, Any], ...]
    frozen: bool
    freeze_reason: str = ""


def memory_read(*, tenant: Any, agent: str, limit: int = 50) -> MemoryView:
    """The agent's long-term memory for the tenant. Under a freeze it is the frozen state:
    nothing can change it until the freeze is lifted."""
    tenant_id = getattr(tenant, "pk", tenant)
    rows = (MemoryItem.objects.filter(tenant_id=tenant_id, agent=agent)
            .order_by("-updated_at")[:max(1, min(limit, 200))])
    freeze = memory_freeze_for(tenant=tenant_id, agent=agent)
    items = tuple({"key": row.key, "value": row.value, "updated_at": row.updated_at.isoformat(),
                   "source_run_id": row.source_run_id} for row in rows)
    return MemoryView(items=items, frozen=freeze is not None, freeze_reason=freeze.reason if freeze else "")


def conversation_window(*, tenant: Any, conversation_id: str) -> list[dict[str, Any]]:
    """The turns the model sees: the current summary (if any) first, then the active turns."""
    tenant_id = getattr(tenant, "pk", tenant)
    rows = list(ConversationMessage.objects.filter(
        tenant_id=tenant_id, conversation_id=conversation_id, summarised_at__isnull=True).order_by("seq"))
    rows.sort(key=lambda row: (row.role != ConversationMessage.Role.SUMMARY, row.seq))
    return [{"role": row.role, "content": row.content, **({"name": row.name} if row.name else {})}
            for row in rows]


def conversation_tokens(*, tenant: Any, conversation_id: str) -> int:
    tenant_id = getattr(tenant, "pk", tenant)
    return sum(ConversationMessage.objects.filter(
        tenant_id=tenant_id, conversation_id=conversation_id, summarised_at__isnull=True,
    ).values_list("tokens", flat=True))


def scratchpad_get(*, tenant: Any, run_id: str, key: str | None = None) -> Any:
    """One value (None when absent) or, without ``key``, the whole scratchpad as a dict."""
    tenant_id = getattr(tenant, "pk", tenant)
    entries = ScratchpadEntry.objects.filter(tenant_id=tenant_id, run_id=str(run_id))
    if key is not None:
        entry = entries.filter(key=key).first()
        return None if entry is None else entry.value
    return {entry.key: entry.value for entry in entries.order_by("key")}
