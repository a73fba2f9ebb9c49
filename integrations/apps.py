from django.apps import AppConfig


class IntegrationsConfig(AppConfig):
    """Tools as data. It sits above the runtime, like the support toolkit: it plugs its
    tools into agents' tool registry when it loads, and nothing in agents imports it."""

    name = "integrations"

    def ready(self) -> None:
        from agents.tools.registry import register_source
        from integrations.logfilter import mask_logged_query_strings
        from integrations.resolver import SOURCE

        register_source(SOURCE)
        mask_logged_query_strings()
