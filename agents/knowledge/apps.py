from django.apps import AppConfig


class KnowledgeConfig(AppConfig):
    name = "agents.knowledge"
    label = "knowledge"
    verbose_name = "Context and memory"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.core import checks

        from agents.llm.checks import check_model_routes

        checks.register(check_model_routes, "models")
