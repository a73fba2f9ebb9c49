"""The golden set: what people type, and the intent, customer and amount the scripted
planner must read from it (tests/agents/golden_phrasings.json, one row per phrasing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agents.planner import INTENTS, classify_intent, parse_amount_cents, parse_customer

GOLDEN = json.loads((Path(__file__).parent / "golden_phrasings.json").read_text())


def test_the_golden_set_is_large_enough_and_well_formed():
    assert len(GOLDEN) >= 40
    assert len({row["message"] for row in GOLDEN}) == len(GOLDEN)
    for row in GOLDEN:
        assert set(row) == {"message", "intent", "customer", "amount_cents"}, row
        assert row["intent"] in INTENTS, row
    # every intent has phrasings, and so do the negatives (no customer, no amount)
    assert {row["intent"] for row in GOLDEN} == set(INTENTS)
    assert any(row["customer"] is None for row in GOLDEN)
    assert any(row["amount_cents"] is None for row in GOLDEN)


@pytest.mark.parametrize("row", GOLDEN, ids=[row["message"][:60] for row in GOLDEN])
def test_phrasing_reads_as_expected(row):
    message = row["message"]
    assert (classify_intent(message), parse_customer(message), parse_amount_cents(message)) == (
        row["intent"],
        row["customer"],
        row["amount_cents"],
    )


@pytest.mark.parametrize(
    "text",
    ["charged 2x", "2 times", "March 2", "2026-03-02", "C-1004", "ticket C-1001-T2", "3x", "on 03/02"],
)
def test_counts_dates_and_codes_are_never_amounts(text):
    assert parse_amount_cents(text) is None


@pytest.mark.parametrize(
    ("text", "cents"),
    [
        ("$25", 2500),
        ("25 dollars", 2500),
        ("25 USD", 2500),
        ("USD 25", 2500),
        ("$12.50", 1250),
        ("$1,200", 120000),
        ("$1,200.99", 120099),
        ("$ 40", 4000),
        ("$5k", 500000),
        ("1 dollar", 100),
    ],
)
def test_amount_formats(text, cents):
    assert parse_amount_cents(text) == cents


def test_customer_codes_are_upper_cased_for_the_tool_schema():
    assert parse_customer("refund c-1005 please") == "C-1005"
    assert parse_customer("see ticket c-1001-t2") == "C-1001"
    assert parse_customer("no code here, 2026-03-02") is None
