"""Search, pagination, export, the console pages, and who may see what."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from audit.models import AuditEvent
from audit.selectors import EventFilters, event_search, parse_filters
from audit.services import Actor, audit_record
from console.errors import InvalidInput

pytestmark = pytest.mark.django_db


def rec(**kwargs):
    with transaction.atomic():
        return audit_record(**{"actor": Actor.system("tests"), "action": "run.step", **kwargs})


@pytest.fixture
def story(acme, globex, lead, operator):
    """A credit's trace: run created, approval requested and decided, credit applied."""
    rec(actor=operator, action="run.created", tenant=acme, object_type="run", object_id="run-1",
        trace_id="tr-1")
    rec(actor=Actor.run("run-1"), action="approval.requested", tenant=acme,
        object_type="approval", object_id="apr-1", trace_id="tr-1", payload={"run_id": "run-1"})
    rec(actor=lead, action="approval.decided", tenant=acme, object_type="approval",
        object_id="apr-1", trace_id="tr-1", policy_version="7",
        payload={"request_id": "apr-1", "decision": "approve", "reason": "duplicate charge",
                 "tool": "apply_credit", "arguments": {"customer": "C-1001", "amount": 30},
                 "edited": True, "run_id": "run-1"})
    rec(actor=Actor.run("run-1"), action="credit.applied", tenant=acme, object_type="credit",
        object_id="cr-1", trace_id="tr-1", payload={"run_id": "run-1", "amount": 30})
    rec(actor=svc_label(), action="run.created", tenant=globex, object_type="run",
        object_id="run-2", trace_id="tr-2")
    # a decision whose payload lacks most keys: the view degrades gracefully
    rec(actor=lead, action="approval.decided", tenant=globex, object_type="approval",
        object_id="apr-2", trace_id="tr-2", payload={})
    for index in range(5):
        rec(tenant=acme, object_type="run", object_id="run-1", trace_id="tr-1",
            payload={"step": index})


def svc_label():
    return Actor("service", "99", "svc-globex")


# --- selectors -----------------------------------------------------------------------------


def test_each_filter_narrows_the_search(story, acme):
    def seqs(**params):
        return [e.seq for e in event_search(filters=parse_filters(params), limit=100).events]

    assert seqs(action="credit.applied") == [4]
    assert seqs(actor="lead") == [6, 3]
    assert seqs(tenant="globex") == [6, 5]
    assert seqs(object_type="approval", object_id="apr-1") == [3, 2]
    assert seqs(trace_id="tr-2") == [6, 5]
    assert seqs(actor="lead", tenant="acme") == [3]
    assert seqs(trace_id="nope") == []
    third = AuditEvent.objects.get(seq=3).occurred_at
    assert seqs(since=third.isoformat(), action="credit.applied") == [4]
    assert seqs(until=third.isoformat()) == [2, 1]
    assert seqs(since=(timezone.now() + timedelta(days=1)).date().isoformat()) == []


def test_keyset_pagination_walks_every_event_once(story):
    seen, cursor = [], None
    while True:
        page = event_search(filters=EventFilters(), cursor=cursor, limit=4)
        seen += [e.seq for e in page.events]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == list(range(11, 0, -1))


@pytest.mark.parametrize(("params", "message"), [
    ({"action": "credit.stolen"}, "not a known audit action"),
    ({"tenant": "initech"}, "not a known tenant slug"),
    ({"since": "yesterday"}, "not an ISO 8601"),
    ({"until": "2026-13-45"}, "not an ISO 8601"),
    ({"since": "2026-03-02", "until": "2026-03-01"}, "since must be earlier than until"),
    ({"trace_id": "x" * 65}, "longer than 64"),
    ({"since": "0001-01-01T00:00:00+14:00"}, "outside the dates"),
    ({"until": "9999-12-31T23:59:59-14:00"}, "outside the dates"),
])
def test_bad_filters_are_refused_clearly(seeded, params, message):
    with pytest.raises(InvalidInput, match=message):
        parse_filters(params)


# --- API ------------------------------------------------------------------------------------


def test_api_search_with_cursor(story, auditor, token_client):
    client = token_client(auditor)
    first = client.get("/api/v1/audit/events", {"tenant": "acme", "limit": 3}).json()
    assert [e["seq"] for e in first["events"]] == [11, 10, 9]
    assert first["events"][0]["tenant"] == "acme" and len(first["events"][0]["hash"]) == 64
    second = client.get("/api/v1/audit/events",
                        {"tenant": "acme", "limit": 3, "cursor": first["next_cursor"]}).json()
    assert [e["seq"] for e in second["events"]] == [8, 7, 4]
    empty = client.get("/api/v1/audit/events", {"trace_id": "none"}).json()
    assert empty == {"events": [], "next_cursor": None, "limit": 50}


@pytest.mark.parametrize("query", [
    {"since": "not-a-date"}, {"action": "nope"}, {"cursor": "garbage!!"}, {"limit": "0"},
    {"limit": "abc"}, {"tenant": "initech"}, {"cursor": "djE6LTU"},
])
def test_api_bad_values_are_422_with_a_message(story, auditor, token_client, query):
    response = token_client(auditor).get("/api/v1/audit/events", query)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] in ("invalid_filter", "invalid_cursor")
    assert len(error["message"]) > 20


def test_api_export_jsonl_streams_every_matching_event(story, admin, token_client):
    response = token_client(admin).get("/api/v1/audit/export",
                                       {"format": "jsonl", "tenant": "acme"})
    assert response.status_code == 200 and response.streaming
    lines = [json.loads(line) for line in b"".join(response.streaming_content).splitlines()]
    assert [e["seq"] for e in lines] == [1, 2, 3, 4, 7, 8, 9, 10, 11]
    assert lines[2]["payload"]["reason"] == "duplicate charge"
    exported = AuditEvent.objects.get(action="audit.exported")
    assert exported.actor_label == "admin" and exported.payload["filters"] == {"tenant": "acme"}


def test_api_export_csv_escapes_formulas(story, auditor, token_client):
    rec(action="reply.drafted", payload={"text": "=HYPERLINK(\"http://evil\")"}, object_id="=1+1")
    response = token_client(auditor).get("/api/v1/audit/export",
                                         {"format": "csv", "action": "reply.drafted"})
    assert response.streaming and response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0][0] == "seq" and len(rows) == 2
    header = rows[0]
    assert rows[1][header.index("object_id")] == "'=1+1"


def test_api_export_rejects_an_unknown_format(story, auditor, token_client):
    response = token_client(auditor).get("/api/v1/audit/export", {"format": "xml"})
    assert response.status_code == 422
    assert "format=jsonl or format=csv" in response.json()["error"]["message"]


def test_api_verify_reports_and_records(story, auditor, token_client):
    body = token_client(auditor).get("/api/v1/audit/verify").json()
    assert body["ok"] is True and body["first_bad_seq"] is None and body["checked"] >= 11
    assert AuditEvent.objects.filter(action="audit.verified", actor_label="auditor").exists()


@pytest.mark.parametrize("persona", ["operator", "lead", "accounts", "outsider", "svc-acme"])
@pytest.mark.parametrize("path", ["/api/v1/audit/events", "/api/v1/audit/export?format=csv",
                                  "/api/v1/audit/verify"])
def test_api_refuses_everyone_but_auditors_and_admins(seeded, token_client, persona, path):
    user = seeded["users"][persona]
    response = token_client(user).get(path)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "audit_forbidden"
    denied = AuditEvent.objects.get(action="audit.access_denied")
    assert denied.actor_label == persona and denied.payload["via"] == "api"
    assert not AuditEvent.objects.filter(action__in=["audit.verified", "audit.exported"]).exists()


def test_api_session_login_works_for_auditor_and_anonymous_gets_401(seeded, auditor, login, client):
    assert login(auditor).get("/api/v1/audit/events").status_code == 200
    assert client.get("/api/v1/audit/events").status_code == 401


def test_api_has_no_write_path(seeded, admin, token_client):
    client = token_client(admin)
    for method in ("post", "put", "patch", "delete"):
        response = getattr(client, method)("/api/v1/audit/events", data="{}",
                                           content_type="application/json")
        assert response.status_code == 405, method


# --- console pages --------------------------------------------------------------------------


def test_page_shows_events_with_links_and_older_cursor(story, auditor, login):
    client = login(auditor)
    html = client.get("/audit/", {"limit": 5}).content.decode()
    assert 'data-seq="11"' in html and 'data-seq="6"' not in html
    assert "data-older" in html and "cursor=" in html
    html = client.get("/audit/", {"action": "approval.decided", "tenant": "acme"}).content.decode()
    assert 'href="/runs/run-1/"' in html
    assert 'href="/approvals/apr-1/"' in html
    assert 'href="/audit/?trace_id=tr-1"' in html


def test_page_htmx_returns_only_the_rows(story, auditor, login):
    response = login(auditor).get("/audit/", {"actor": "lead"}, HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in html and "<table" in html and 'data-seq="3"' in html


def test_page_bad_filter_is_422_with_message_and_htmx_shows_it(story, auditor, login):
    client = login(auditor)
    response = client.get("/audit/", {"since": "last tuesday"})
    assert response.status_code == 422
    assert "not an ISO 8601" in response.content.decode()
    response = client.get("/audit/", {"cursor": "%%%"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and "data-error" in response.content.decode()


def test_page_empty_result(story, auditor, login):
    html = login(auditor).get("/audit/", {"trace_id": "nothing"}).content.decode()
    assert "data-empty" in html


def test_verify_button_posts_and_records(story, auditor, login):
    client = login(auditor)
    page = client.get("/audit/").content.decode()
    assert 'hx-post="/audit/verify/"' in page and 'action="/audit/verify/"' in page
    response = client.post("/audit/verify/", HTTP_HX_REQUEST="true")
    assert 'data-verify="ok"' in response.content.decode()
    response = client.post("/audit/verify/")
    assert response.status_code == 200 and 'data-verify="ok"' in response.content.decode()
    assert AuditEvent.objects.filter(action="audit.verified", actor_label="auditor").count() == 2
    assert client.get("/audit/verify/").status_code == 405


def test_who_approved_what(story, admin, login):
    html = login(admin).get("/audit/approvals/").content.decode()
    assert "duplicate charge" in html and "apply_credit" in html and "C-1001" in html
    assert 'data-effect="credit.applied"' in html
    assert "edited" in html and "policy 7" in html
    assert "operator" in html  # who asked: the run's creator
    assert "not recorded" in html  # the decision with an empty payload still renders
    html = login(admin).get("/audit/approvals/", {"tenant": "globex"},
                            HTTP_HX_REQUEST="true").content.decode()
    assert "duplicate charge" not in html and 'data-seq="6"' in html


@pytest.mark.parametrize("persona", ["operator", "lead", "accounts", "outsider"])
@pytest.mark.parametrize(("method", "path"), [("get", "/audit/"), ("get", "/audit/approvals/"),
                                              ("post", "/audit/verify/")])
def test_pages_are_404_for_other_roles_and_audited(seeded, login, persona, method, path):
    response = getattr(login(seeded["users"][persona]), method)(path)
    assert response.status_code == 404
    denied = AuditEvent.objects.get(action="audit.access_denied")
    assert denied.actor_label == persona and denied.payload["via"] == "console"
    assert denied.payload["path"] == path


def test_pages_need_login(seeded, client):
    response = client.get("/audit/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_nav_shows_audit_to_auditor_only(seeded, login, auditor, operator):
    assert 'data-nav="audit"' in login(auditor).get("/").content.decode()
    assert 'data-nav="audit"' not in login(operator).get("/").content.decode()
