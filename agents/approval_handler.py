"""The runtime's handler for approval requests about runs (kind ``agent_run``), which
``agents.apps`` registers with approvals when the app loads (approvals.subjects).

Approvals calls it, inside its own transactions, when it needs the run: a request closed
(approved, rejected or expired: the run resumes and reads the outcome; cancelled: the
call it held is refused), a reviewer's edit to check (the tool's schema and its own
invariants, then the policy active now), the tool's review of the arguments and the
run's trace for the reviewer's page.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from agents import broker, policy
from agents.approval_subject import KIND
from agents.models import AgentRun, ToolInvocation
from agents.selectors import run_trace
from agents.services.runs import run_resume_after_approval
from agents.tools import get_tool
from approvals.models import ApprovalRequest, ApprovalStatus
from approvals.subjects import EditCheck, SubjectHandler

# the request's final status as run_resume_after_approval (and run.resumed) name it
_OUTCOMES = {
    ApprovalStatus.APPROVED: "approve",
    ApprovalStatus.REJECTED: "reject",
    ApprovalStatus.EXPIRED: "expired",
}


class RunApprovals(SubjectHandler):
    kind = KIND
    noun = "run"

    def closed(self, request: ApprovalRequest, *, status: str, actor: Any, now: datetime) -> None:
        if status == ApprovalStatus.CANCELLED:  # the run is being cancelled: the call never runs
            broker.invocation_decided(ToolInvocation.objects.get(pk=request.action_id), outcome=status)
            return
        run = AgentRun.objects.get(public_id=request.subject_id)
        run_resume_after_approval(
            run=run, actor=actor, request_id=request.id, outcome=_OUTCOMES[status], now=now
        )

    def validate(self, request: ApprovalRequest, arguments: dict[str, Any]) -> list[str]:
        tool = get_tool(request.tool, request.tenant_id)  # data tools are per tenant
        return tool.validate(arguments) if tool else [f"unknown tool {request.tool}"]

    def check_edit(self, request: ApprovalRequest, arguments: dict[str, Any]) -> EditCheck:
        tool = get_tool(request.tool, request.tenant_id)  # data tools are per tenant
        refusals = tool.precheck(request.tenant_id, arguments) if tool and tool.precheck else []
        if refusals:
            return EditCheck(refused=refusals[0][1])
        run = AgentRun.objects.select_related("tenant").get(public_id=request.subject_id)
        decision = policy.decide(
            policy.ActionContext(
                tool=request.tool,
                tier=request.risk_tier,
                arguments=arguments,
                tenant=run.tenant.slug,
                intent=run.intent,
                facts=policy.action_facts(tenant_id=run.tenant_id, arguments=arguments),
            )
        )
        return EditCheck(
            denied=decision.reason if decision.effect == policy.DENY else None,
            queue=decision.queue if decision.effect == policy.REQUIRE_APPROVAL else "",
            approvals_required=decision.approvals_required,
        )

    def review(self, request: ApprovalRequest) -> dict[str, Any] | None:
        """The tool's review hook (``Tool.review``) on the arguments under review (the edited
        ones once an edit was approved), read now; None for a tool without one."""
        tool = get_tool(request.tool, request.tenant_id)  # data tools are per tenant
        if tool is None or tool.review is None:
            return None
        return tool.review(request.tenant_id, request.approved_arguments or request.arguments)

    def trace(self, request: ApprovalRequest) -> dict[str, Any] | None:
        return run_trace(AgentRun.objects.get(public_id=request.subject_id))

    def trace_url(self, request: ApprovalRequest) -> str:
        return f"/api/v1/runs/{request.subject_id}/trace"
