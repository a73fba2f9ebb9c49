"""Run list and run detail pages: operators only, filters, trace timeline, start form."""

from __future__ import annotations

import pytest

from agents.models import AgentRun
from tests.agents.conftest import REFUND

pytestmark = pytest.mark.django_db
QUESTION = "What plan is customer C-1002 on?"


@pytest.mark.parametrize("persona", ["lead", "auditor", "outsider", "svc-acme"])
def test_runs_pages_are_404_for_non_operators(start_run, login, seeded, persona):
    run = start_run(QUESTION)
    client = login(seeded["users"][persona])
    assert client.get("/runs/").status_code == 404
    assert client.get(f"/runs/{run.public_id}/").status_code == 404
    assert client.post("/runs/", {"tenant": "acme", "message": QUESTION}).status_code == 404


def test_run_list_filters_by_status_intent_and_id(start_run, step, login, operator):
    done = step(start_run(QUESTION))
    parked = step(start_run(REFUND))
    client = login(operator)
    page = client.get("/runs/").content.decode()
    assert str(done.public_id) in page and str(parked.public_id) in page
    page = client.get("/runs/?status=waiting_approval").content.decode()
    assert str(parked.public_id) in page and str(done.public_id) not in page
    page = client.get("/runs/?intent=general_question", HTTP_HX_REQUEST="true").content.decode()
    assert str(done.public_id) in page and str(parked.public_id) not in page and "<html" not in page
    page = client.get(f"/runs/?q={parked.trace_id}").content.decode()
    assert str(parked.public_id) in page and str(done.public_id) not in page
    assert "Unknown status" in client.get("/runs/?status=bogus").content.decode()


def test_run_detail_shows_the_trace_timeline_progress_and_collapsed_prompts(start_run, step, login, operator):
    run = step(start_run(REFUND))
    client = login(operator)
    page = client.get(f"/runs/{run.public_id}/").content.decode()
    assert 'data-run-status="waiting_approval"' in page and "data-waiting" in page
    assert 'data-kind="model"' in page and 'data-kind="tool"' in page
    assert 'data-approval-wait="pending"' in page
    assert f"Step {run.steps_used} of {run.max_steps}" in page
    assert '<details class="raw"><summary>raw prompt' in page  # collapsed
    # replayed tool calls read as calls with their ids, their results carry the same id
    call_id = f"call{run.state['observations'][0]['seq']:05d}"
    assert f"call {call_id}: lookup_subscription(" in page and f"[tool {call_id}]" in page
    assert "] None" not in page
    assert 'hx-trigger="every' in page  # live while active
    live = client.get(f"/runs/{run.public_id}/", HTTP_HX_REQUEST="true").content.decode()
    assert "<html" not in live and 'id="run-live"' in live


def test_finished_run_stops_polling(start_run, step, login, operator):
    run = step(start_run(QUESTION))
    page = login(operator).get(f"/runs/{run.public_id}/").content.decode()
    assert 'data-run-status="succeeded"' in page and 'hx-trigger="every' not in page


def test_start_a_run_from_the_console(
    runtime, login, operator, django_capture_on_commit_callbacks, monkeypatch
):
    from agents import tasks

    monkeypatch.setattr(tasks, "send_run", lambda run_id: None)
    client = login(operator)
    response = client.post("/runs/", {"tenant": "acme", "message": QUESTION, "intent": ""})
    assert response.status_code == 302
    run = AgentRun.objects.get()
    assert response["Location"] == f"/runs/{run.public_id}/"
    assert run.requester == operator and run.intent == "general_question"
    bad = client.post("/runs/", {"tenant": "acme", "message": "", "intent": ""})
    assert bad.status_code == 422 and "input.message is required" in bad.content.decode()
    assert client.get("/runs/nope/").status_code == 404
