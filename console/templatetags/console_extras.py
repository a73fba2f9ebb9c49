"""Small template filters shared by the console's pages."""

import json

from django import template
from django.core.serializers.json import DjangoJSONEncoder

register = template.Library()


@register.filter
def pretty_json(value) -> str:
    """Indented JSON for evidence, tool arguments and trace payloads (autoescaped by the
    template like any other string)."""
    try:
        return json.dumps(value, indent=2, sort_keys=True, cls=DjangoJSONEncoder, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


@register.filter
def money(cents, currency: str = "USD") -> str:
    """4000, "USD" -> "$40.00 USD"; other currencies keep their code."""
    if cents is None or cents == "":
        return ""
    try:
        amount = int(cents) / 100
    except (TypeError, ValueError):
        return str(cents)
    symbol = "$" if (currency or "USD").upper() == "USD" else ""
    return f"{symbol}{amount:,.2f} {(currency or 'USD').upper()}"
