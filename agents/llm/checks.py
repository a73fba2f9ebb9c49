"""A system check so a bad model route fails at start-up (``manage.py check``, web, worker)
rather than at the first model call."""

from __future__ import annotations

from django.core.checks import Error
from django.core.exceptions import ImproperlyConfigured


def check_model_routes(app_configs=None, **kwargs):
    from django.conf import settings

    from agents.llm.config import load_routes, parse_json, routes_for_agent

    try:
        routes = load_routes()
        table = parse_json("MODEL_AGENT_ROUTES", getattr(settings, "MODEL_AGENT_ROUTES", {}))
        for agent in {*(table if isinstance(table, dict) else {}), "*"}:
            routes_for_agent(agent, routes=routes)
    except ImproperlyConfigured as exc:
        return [Error(str(exc), hint="See docs/models.md for the model route variables.", id="models.E001")]
    return []
