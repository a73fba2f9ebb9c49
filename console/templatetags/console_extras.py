"""Small template filters shared by the console's pages."""

import json
from datetime import UTC, date, datetime

from django import template
from django.core.serializers.json import DjangoJSONEncoder
from django.utils import dateformat, timezone

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


@register.filter
def cents(value, currency: str = "USD") -> str:
    """Money as a person reads it: 4000 -> "$40.00"; -250 -> "-$2.50"; another currency
    keeps its code (4000, "EUR" -> "40.00 EUR"). None or "" -> ""."""
    if value is None or value == "":
        return ""
    try:
        amount = int(value)
    except (TypeError, ValueError):
        return str(value)
    sign = "-" if amount < 0 else ""
    number = f"{abs(amount) / 100:,.2f}"
    code = (currency or "USD").upper()
    return f"{sign}${number}" if code == "USD" else f"{sign}{number} {code}"


@register.filter
def readable_date(value, style: str = "") -> str:
    """Dates as a person reads them. A day (a ``date`` or "2026-03-02") -> "2 March 2026";
    a moment (a ``datetime`` or an ISO timestamp) -> "6 Dec 2026, 04:17 UTC" (naive ones are
    taken as UTC); ``|readable_date:"day"`` gives a moment's day alone. Anything else is
    shown as it is."""
    if value is None or value == "":
        return ""
    moment = value
    if isinstance(value, str):
        try:
            moment = (date.fromisoformat if len(value) == 10 else datetime.fromisoformat)(value)
        except ValueError:
            return value
    if isinstance(moment, datetime):
        if timezone.is_naive(moment):
            moment = moment.replace(tzinfo=UTC)
        moment = moment.astimezone(UTC)
        if style != "day":
            return dateformat.format(moment, "j M Y, H:i") + " UTC"
        moment = moment.date()
    if isinstance(moment, date):
        return dateformat.format(moment, "j F Y")
    return str(value)


@register.filter
def field_label(key) -> str:
    """A dict key as a label: "justified_cents" -> "Justified cents"."""
    text = str(key).replace("_", " ").strip()
    return text[:1].upper() + text[1:]


@register.filter
def as_text(value) -> str:
    """A JSON value as a line of text: None -> "—", booleans -> "yes"/"no", a list of
    scalars joined with commas; anything nested as indented JSON."""
    if value is None or value == "" or value == []:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str | int | float):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        return ", ".join(str(v) for v in value)
    return pretty_json(value)
