"""The webhook's door, pure: what parse_envelope refuses (nothing of it could be stored), what check_event
refuses (the future, the other mode), and what the views read from both API versions' shapes."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from entitlements.billing.events import InvalidEvent, InvoiceLine, parse_envelope
from entitlements.billing.service import check_event
from entitlements.errors import LivemodeMismatch, ValidationFailed
from entitlements.settings import StripeSettings
from tests.support.stripe_payloads import CURRENT, LEGACY, invoice_line, invoice_paid_event, now_s

SETTINGS = StripeSettings(
    api_key=None, webhook_secret="whsec_x", api_base=None, webhook_tolerance_s=300, success_url="", cancel_url=""
)


def parsed(document: Any, depth_max: int = 64) -> Any:
    return parse_envelope(json.dumps(document).encode(), depth_max=depth_max)


def test_an_event_in_stripes_shape_parses() -> None:
    sent = invoice_paid_event()
    envelope = parsed(sent)
    assert (envelope.id, envelope.type, envelope.created, envelope.livemode) == (
        sent["id"],
        "invoice.paid",
        sent["created"],
        False,
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"created": 2**63}, "created"),
        ({"created": -(10**12)}, "created"),
        ({"id": ""}, "id"),
        ({"id": "x" * 256}, "id"),
    ],
)
def test_what_no_stripe_event_has_is_refused_naming_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidEvent) as refused:
        parsed(invoice_paid_event() | change)
    assert refused.value.field == field


@given(st.text(min_size=1, max_size=20).filter(lambda text: "\x00" in text or not text.isascii()))
def test_text_postgresql_cannot_hold_or_ids_outside_stripes_alphabet_never_pass(text: str) -> None:
    sent = invoice_paid_event() | {"id": text}
    with pytest.raises(InvalidEvent):
        parsed(sent)


def test_the_depth_limit_holds_at_and_past_it() -> None:
    def deep(levels: int) -> dict[str, Any]:
        value: Any = 1
        for _ in range(levels):
            value = {"a": value}
        return {"id": "evt_1", "type": "x.y", "created": now_s(), "livemode": False, "data": {"object": value}}

    parsed(deep(62), depth_max=64)  # envelope and data are two levels, the object's 62 make 64
    with pytest.raises(InvalidEvent, match="nested deeper than 64 levels"):
        parsed(deep(63), depth_max=64)


def test_an_event_from_the_future_or_the_other_mode_is_refused() -> None:
    now = float(now_s())
    check_event(parsed(invoice_paid_event() | {"created": int(now) + 300}), SETTINGS, now)
    with pytest.raises(ValidationFailed, match="created"):
        check_event(parsed(invoice_paid_event() | {"created": int(now) + 301}), SETTINGS, now)
    with pytest.raises(LivemodeMismatch, match="test mode"):
        check_event(parsed(invoice_paid_event() | {"livemode": True}), SETTINGS, now)
    with pytest.raises(LivemodeMismatch, match="live mode"):
        check_event(parsed(invoice_paid_event()), dataclasses.replace(SETTINGS, livemode=True), now)


@pytest.mark.parametrize("version", [CURRENT, LEGACY])
@pytest.mark.parametrize("invoice_item", [False, True])
@pytest.mark.parametrize("proration", [False, True])
def test_a_line_says_its_price_kind_and_proration_in_either_version(
    version: str, invoice_item: bool, proration: bool
) -> None:
    shape = invoice_line(
        price="price_x", period_end=now_s(), proration=proration, invoice_item=invoice_item, version=version
    )
    line = msgspec.convert(shape, InvoiceLine)
    assert (line.price_id, line.is_invoice_item, line.is_proration) == ("price_x", invoice_item, proration)
