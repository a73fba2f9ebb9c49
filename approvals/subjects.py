"""What an approval request is about, and who answers for it.

A request carries its subject: a kind (``agent_run``) and the id of one thing of that
kind (the run's public id), plus the proposed action it holds (``action_id``; for a run,
its tool call). Approvals knows nothing else of it. The app that files requests of a kind
registers one handler for that kind when it loads (``agents.apps`` registers the
runtime's), and approvals calls the handler whenever it needs the subject: a request
closed (resume the run, refuse the held call), an edit to check, the reviewer's evidence,
the trace. This is how Django's admin finds what the apps above it define: the lower app
keeps the registry, the upper apps fill it.

A kind without a handler fails closed (``UnknownSubject``): no request of it is filed,
decided, edited or cancelled. Pages still list such a request, without the tool's check.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from console.errors import DomainError

if TYPE_CHECKING:
    from approvals.models import ApprovalRequest


@dataclass(frozen=True)
class Subject:
    """One thing requests are about: its kind, its id, and the tenant and trace its
    requests and handoffs are filed under."""

    kind: str
    id: str
    tenant_id: Any = None
    trace_id: str = ""


@dataclass(frozen=True)
class Proposal:
    """One proposed action for a reviewer, as the app that files it describes it."""

    subject: Subject
    action_id: str  # the action within the subject; one pending request per action
    tool: str
    arguments: dict[str, Any]
    risk_tier: str
    requester_id: Any = None
    requester_label: str = ""
    on_behalf_of_id: Any = None
    on_behalf_of_label: str = ""


@dataclass(frozen=True)
class EditCheck:
    """What the subject's owner says of a reviewer's edited arguments (schema-valid)."""

    refused: str | None = None  # why the action itself would refuse them (422); None: it would not
    denied: str | None = None  # why the policy denies them (403); None: it does not
    queue: str = ""  # the queue the edited action needs a decision in; "" for none
    approvals_required: int = 0


class SubjectHandler:
    """What approvals asks of the app behind one kind of subject. Subclass it, set
    ``kind`` and ``noun``, and ``register`` an instance in the app's ``ready()``."""

    kind = ""
    # what people and the audit log call one subject: "run" -> object type "run", and
    # "run_id" in the audit payloads of its requests and handoffs
    noun = ""

    def closed(self, request: ApprovalRequest, *, status: str, actor: Any, now: datetime) -> None:
        """``request`` reached the final ``status`` (approved, rejected, expired or
        cancelled), inside the transaction that closed it. Raising rolls the close back."""
        raise NotImplementedError

    def validate(self, request: ApprovalRequest, arguments: dict[str, Any]) -> list[str]:
        """Problems of edited ``arguments`` against the action's schema, readable."""
        raise NotImplementedError

    def check_edit(self, request: ApprovalRequest, arguments: dict[str, Any]) -> EditCheck:
        """The action's own checks and the policy's decision on schema-valid edited
        ``arguments``."""
        raise NotImplementedError

    def review(self, request: ApprovalRequest) -> dict[str, Any] | None:
        """What a reviewer needs to judge the arguments under review, read now; None when
        there is nothing to show."""
        return None

    def trace(self, request: ApprovalRequest) -> dict[str, Any] | None:
        """The subject's trace for the page (``{"steps": [...]}``), None without one."""
        return None

    def trace_url(self, request: ApprovalRequest) -> str:
        """Where the API serves that trace ("" without one)."""
        return ""


class UnknownSubject(DomainError):
    code = "unknown_subject"
    status = 500

    def __init__(self, kind: str):
        super().__init__(
            f"No handler is registered for approval subjects of kind {kind!r}: the app that "
            "files them registers one when it loads (approvals.subjects.register). Failing "
            "closed: nothing was changed."
        )
        self.kind = kind


HANDLERS: dict[str, SubjectHandler] = {}


def register(handler: SubjectHandler) -> None:
    """Make ``handler`` answer for its kind. Registering the same kind again with a handler
    of another class is a mistake (two apps claiming one kind) and raises."""
    if not handler.kind or not handler.noun:
        raise ValueError(f"{type(handler).__name__} needs a kind and a noun.")
    existing = HANDLERS.get(handler.kind)
    if existing is not None and type(existing) is not type(handler):
        raise ValueError(
            f"Approval subject kind {handler.kind!r} is already handled by {type(existing).__name__}."
        )
    HANDLERS[handler.kind] = handler


def handler_for(kind: str) -> SubjectHandler:
    """The handler of ``kind``; ``UnknownSubject`` when no app registered one."""
    handler = HANDLERS.get(kind)
    if handler is None:
        raise UnknownSubject(kind)
    return handler


def subject_ref(kind: str, subject_id: str) -> dict[str, str]:
    """The subject's id as audit payloads carry it: ``{"run_id": ...}`` for a run."""
    return {f"{handler_for(kind).noun}_id": subject_id}


def subject_label(kind: str, subject_id: str) -> str:
    """ "run 6f1c..." for a person; an unknown kind shows as itself."""
    handler = HANDLERS.get(kind)
    return f"{handler.noun if handler else kind} {subject_id}"
