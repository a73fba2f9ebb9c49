"""Every audit action the product may write. An unknown name is refused at write time.

Dotted names, ``<object>.<what happened>``. Add an action here in the same change that
first writes it.
"""

ACTIONS: dict[str, str] = {
    # identity
    "token.issued": "An API token was issued (the secret itself is never recorded).",
    "token.revoked": "An API token was revoked.",
    "auth.denied": "A request was refused authentication or authorisation.",
    "demo.seeded": "Demo data was created by seed_demo.",
    # audit itself
    "audit.access_denied": "Someone without audit access tried to read the audit log.",
    "audit.verified": "The audit chain was verified.",
    "audit.exported": "Audit events were exported.",
    "audit.checkpoint": "A signed checkpoint of the chain head was taken.",
    # runs
    "run.created": "A run was created.",
    "run.started": "A worker started or resumed a run.",
    "run.step": "A run completed one step.",
    "run.parked": "A run parked waiting for approval.",
    "run.resumed": "A parked run was resumed.",
    "run.succeeded": "A run finished successfully.",
    "run.failed": "A run failed.",
    "run.denied": "A run ended because policy denied an action.",
    "run.cancelled": "A run was cancelled.",
    "run.handed_off": "A run was handed off to a human.",
    "run.budget_exhausted": "A run hit a hard budget.",
    "run.killed": "A run was stopped by a kill switch.",
    "policy.decided": "The policy engine decided on a proposed action.",
    "policy.created": "A new policy version was stored.",
    "policy.activated": "A policy version was activated.",
    "tool.executed": "A tool ran and returned a result.",
    "tool.failed": "A tool call failed.",
    "tool.replayed": "A tool call returned its stored result instead of acting again.",
    "tool.refused": "A tool call was refused before execution.",
    "model.called": "A model was called.",
    "credit.applied": "A credit was written to the ledger.",
    "account.status_changed": "A customer account status changed.",
    "reply.drafted": "A reply draft was saved.",
    # approvals
    "approval.requested": "An approval request was created.",
    "approval.claimed": "A reviewer took the lease on a request.",
    "approval.released": "A reviewer released a lease.",
    "approval.decided": "A reviewer decided on a request.",
    "approval.refused": "A decision was refused (segregation of duties, rights, state).",
    "approval.expired": "A request expired and failed closed.",
    "approval.escalated": "A request breached its SLA and escalated.",
    "approval.flagged": "A request is near its SLA deadline.",
    "approval.cancelled": "A request was cancelled.",
    "approval.throttled": "A queue at capacity refused a new request.",
    "notification.sent": "A notification was delivered.",
    "notification.failed": "A notification could not be delivered after retries.",
    "handoff.created": "A run was placed in the human handoff queue.",
    "handoff.taken": "A person took a handoff.",
    "handoff.resolved": "A handoff was closed with a note.",
    # switches
    "switch.engaged": "A kill switch was engaged.",
    "switch.released": "A kill switch was released.",
    "switch.expired": "A kill switch lifted at its expiry.",
    "run.paused": "A run parked (queued, no worker held) because its agent is paused by a switch.",
    # memory and context
    "memory.written": "A memory item was written.",
    "memory.refreshed": "Long-term memory was refreshed.",
    "memory.refused": "A memory write or refresh was refused (frozen).",
    "context.stale": "A retrieval source was stale.",
    "memory.frozen": "Memory was frozen for a tenant, an agent or everything.",
    "memory.unfrozen": "A memory freeze was lifted.",
    "memory.forgotten": "A long-term memory item was deleted.",
    "context.source_saved": "A knowledge source (owner, maximum age, critical) was created or changed.",
    "context.source_refreshed": "A knowledge source was marked as refreshed.",
    "context.document_saved": "A knowledge document was created or changed.",
}
