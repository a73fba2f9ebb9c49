"""Tenant-safe retrieval with freshness: wrong tenant sees nothing, stale critical fails closed."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from agents.knowledge.models import Document, Source
from agents.knowledge.seed import seed_knowledge
from agents.knowledge.selectors import (
    MAX_BODY_CHARS,
    MAX_LIMIT,
    TRUNCATION_MARKER,
    FullTextRetriever,
    StaleSource,
    context_retrieve,
)
from agents.knowledge.services import document_upsert, source_mark_refreshed, source_upsert
from audit.models import AuditEvent
from audit.services import Actor
from console.errors import InvalidInput

SYSTEM = Actor.system("tests")


@pytest.fixture
def knowledge(tenants):
    seed_knowledge(tenants=tenants)
    return tenants


def source(tenant, name):
    return Source.objects.get(tenant=tenant, name=name)


def test_retrieves_the_tenants_policy_for_a_support_question(knowledge, acme):
    result = context_retrieve(tenant=acme, query="Customer C-1001 was billed twice in March, please "
                                                 "refund the $40 duplicate charge")
    assert not result.empty
    assert result.hits[0].title == "Refund and duplicate charge policy"
    assert result.hits[0].source == "Billing policy" and result.hits[0].source_kind == "policy"
    assert all(not hit.stale and hit.labels == () for hit in result.hits)
    assert result.stale_sources == ()


def test_wrong_tenant_retrieval_returns_nothing(knowledge, acme, globex):
    billing = source(acme, "Billing policy")
    document_upsert(actor=SYSTEM, source=billing, title="Zebrafish escalation",
                    body="Zebrafish accounts escalate to the platinum desk.")
    assert context_retrieve(tenant=acme, query="zebrafish platinum").hits[0].title == "Zebrafish escalation"

    result = context_retrieve(tenant=globex, query="zebrafish platinum")
    assert result.empty and result.hits == ()
    assert "no document of this tenant" in result.reason


def test_a_tenant_only_ever_gets_its_own_documents(knowledge, acme, globex):
    result = context_retrieve(tenant=globex, query="refund duplicate charge credit approval invoice",
                              limit=MAX_LIMIT)
    globex_ids = {str(pk) for pk in Document.objects.filter(tenant=globex).values_list("pk", flat=True)}
    assert result.hits and {hit.document_id for hit in result.hits} <= globex_ids


def test_a_retriever_that_forgets_the_tenant_filter_still_cannot_leak(knowledge, acme, globex):
    class Careless(FullTextRetriever):
        def search(self, *, tenant_id, **kwargs):  # ignores tenant_id on purpose
            return [(doc, 1.0) for doc in Document.objects.select_related("source")]

    result = context_retrieve(tenant=globex, query="refund", retriever=Careless(), limit=MAX_LIMIT)
    assert {hit.source for hit in result.hits} and all(
        Document.objects.get(pk=hit.document_id).tenant_id == globex.pk for hit in result.hits)


def test_empty_retrieval_is_a_result_not_an_error(knowledge, acme):
    result = context_retrieve(tenant=acme, query="xylophone quartet")
    assert result.empty is True and result.hits == ()
    assert result.as_trace()["empty"] is True
    stopwords_only = context_retrieve(tenant=acme, query="what is the")
    assert stopwords_only.empty and "no searchable words" in stopwords_only.reason


def test_results_are_bounded_and_bodies_truncated_with_a_marker(acme):
    src = source_upsert(actor=SYSTEM, tenant=acme, name="Many", owner="Docs team",
                        max_age=timedelta(days=30), refreshed_at=timezone.now())
    for index in range(MAX_LIMIT + 5):
        document_upsert(actor=SYSTEM, source=src, title=f"Refund note {index}",
                        body="refund " + "lorem ipsum dolor " * 200)
    result = context_retrieve(tenant=acme, query="refund", limit=50)
    assert len(result.hits) == MAX_LIMIT
    hit = result.hits[0]
    assert hit.truncated and hit.body.endswith(TRUNCATION_MARKER)
    assert len(hit.body) <= MAX_BODY_CHARS + len(TRUNCATION_MARKER)


@pytest.mark.parametrize("limit", [0, -1, "5", None])
def test_a_bad_limit_says_what_is_wrong(acme, limit):
    with pytest.raises(InvalidInput, match="limit must be a positive integer"):
        context_retrieve(tenant=acme, query="refund", limit=limit)


def test_retrieval_without_a_tenant_is_refused():
    with pytest.raises(InvalidInput, match="needs a tenant"):
        context_retrieve(tenant=None, query="refund")


def test_a_stale_critical_source_fails_closed_naming_source_owner_and_age(knowledge, acme):
    billing = source(acme, "Billing policy")
    source_mark_refreshed(actor=SYSTEM, source=billing, at=timezone.now() - timedelta(days=200))
    with pytest.raises(StaleSource) as caught:
        context_retrieve(tenant=acme, query="refund the duplicate charge", actor=SYSTEM, trace_id="t-1")
    message = str(caught.value)
    assert "'Billing policy'" in message and "Acme Billing Operations" in message
    assert "200 day(s)" in message and "180 day(s)" in message
    assert caught.value.code == "stale_source"
    event = AuditEvent.objects.filter(action="context.stale").latest("seq")
    assert event.payload["outcome"] == "failed_closed" and event.trace_id == "t-1"
    assert event.tenant_id == acme.pk


def test_a_never_refreshed_critical_source_fails_closed(acme):
    src = source_upsert(actor=SYSTEM, tenant=acme, name="Credit limits", owner="Finance",
                        max_age=timedelta(days=30), critical=True)
    document_upsert(actor=SYSTEM, source=src, title="Credit limits", body="Credit limits for refunds.")
    with pytest.raises(StaleSource, match="never refreshed"):
        context_retrieve(tenant=acme, query="refunds credit limits")


def test_a_stale_non_critical_source_degrades_with_a_stale_label(knowledge, acme):
    help_center = source(acme, "Help center")
    source_mark_refreshed(actor=SYSTEM, source=help_center, at=timezone.now() - timedelta(days=400))
    result = context_retrieve(tenant=acme, query="invoice pro-rated line credits")
    stale_hits = [hit for hit in result.hits if hit.source == "Help center"]
    assert stale_hits and all(hit.stale and hit.labels == ("stale",) for hit in stale_hits)
    assert result.stale_sources == ("Help center",)
    assert all(not hit.stale for hit in result.hits if hit.source != "Help center")
    assert result.as_trace()["hits"][0]["labels"] in (["stale"], [])


def test_a_stale_critical_source_does_not_block_questions_it_does_not_answer(knowledge, acme):
    source_mark_refreshed(actor=SYSTEM, source=source(acme, "Billing policy"),
                          at=timezone.now() - timedelta(days=400))
    result = context_retrieve(tenant=acme, query="sign-in password reset", sources=["Help center"])
    assert all(hit.source == "Help center" for hit in result.hits)


def test_seeding_twice_changes_nothing(knowledge, tenants):
    before = (Document.objects.count(), AuditEvent.objects.count())
    seed_knowledge(tenants=tenants)
    assert (Document.objects.count(), AuditEvent.objects.count()) == before


@pytest.mark.postgres
def test_postgres_uses_full_text_search_with_a_gin_index(knowledge, acme):
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only")
    assert not Document.objects.filter(search_vector__isnull=True).exists()
    assert context_retrieve(tenant=acme, query="refunds").backend == "postgres_fts"
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'knowledge_doc_search_gin'")
        assert "USING gin" in cursor.fetchone()[0]
