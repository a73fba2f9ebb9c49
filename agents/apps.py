from django.apps import AppConfig


class AgentsConfig(AppConfig):
    name = "agents"

    def ready(self) -> None:
        # Approvals knows nothing of runs: the runtime answers for its requests (resume the
        # run, refuse the call, check an edit), as support.apps registers its fact provider.
        from agents.approval_handler import RunApprovals
        from approvals.subjects import register

        register(RunApprovals())
