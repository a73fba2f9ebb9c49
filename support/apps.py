from django.apps import AppConfig


class SupportConfig(AppConfig):
    name = "support"
    label = "support"
    verbose_name = "Support toolkit (demo customer system)"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from agents.policy import register_fact_provider
        from support import tools  # noqa: F401  (registers the toolkit's tools)
        from support.facts import customer_scope

        register_fact_provider(customer_scope)
