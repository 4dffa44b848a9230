"""The webhook's door: a correctly signed but hostile body is 400/422 and stores nothing; a signature dated
beyond the tolerance either way is refused; an event of the other mode than the key in use is refused."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from tests.support.billing import delivered
from tests.support.http import Api
from tests.support.stripe_fake import deliver, deliver_bytes, stripe_api_for
from tests.support.stripe_payloads import checkout_completed_event, event, invoice_paid_event, now_s

TOLERANCE_S = 300  # STRIPE_WEBHOOK_TOLERANCE_S of the test app
DEPTH_MAX = 64  # STRIPE_EVENT_DEPTH_MAX's default


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Api]:
    async with stripe_api_for(database_url) as client:
        yield client


async def stored(pool: asyncpg.Pool) -> int:
    count: int = await pool.fetchval("SELECT count(*) FROM stripe_events")
    return count


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"a": value}
    return value


def with_object(**fields: Any) -> dict[str, Any]:
    sent = invoice_paid_event(user_id="u1")
    sent["data"]["object"].update(fields)
    return sent


HOSTILE: list[Any] = [
    pytest.param(invoice_paid_event() | {"created": 2**63}, 422, "created", id="created-2^63"),
    pytest.param(invoice_paid_event() | {"created": -(10**12)}, 422, "created", id="created-minus-10^12"),
    pytest.param(invoice_paid_event() | {"created": now_s() + 86_400}, 422, "created", id="created-tomorrow"),
    pytest.param(invoice_paid_event() | {"id": "evt_\x00"}, 422, "body", id="NUL-in-the-event-id"),
    pytest.param(with_object(id="in_\x00"), 422, "body", id="NUL-in-the-object-id"),
    pytest.param(with_object(description="a\x00b"), 422, "body", id="NUL-anywhere"),
    pytest.param(invoice_paid_event() | {"id": ""}, 422, "id", id="empty-event-id"),
    pytest.param(invoice_paid_event() | {"id": "e" * 100_000}, 422, "id", id="100000-character-event-id"),
    pytest.param(with_object(id=""), 422, "data.object.id", id="empty-object-id"),
    pytest.param(with_object(id="in_" + "x" * 100_000), 422, "data.object.id", id="100000-character-object-id"),
    pytest.param(invoice_paid_event() | {"id": "evt_1/../x"}, 422, "id", id="id-outside-stripes-alphabet"),
    pytest.param(invoice_paid_event() | {"type": "Invoice Paid!"}, 422, "type", id="malformed-type"),
    pytest.param(with_object(deep=nested(DEPTH_MAX)), 422, "body", id="nested-past-the-limit"),
    pytest.param({"hello": "world"}, 422, "id", id="not-an-event"),
    pytest.param([1, 2, 3], 422, "body", id="an-array"),
    pytest.param({k: v for k, v in invoice_paid_event().items() if k != "livemode"}, 422, "livemode", id="no-livemode"),
    pytest.param(invoice_paid_event() | {"data": {"object": "in_1"}}, 422, "data", id="object-not-an-object"),
]


@pytest.mark.parametrize(("body", "status", "field"), HOSTILE)
async def test_a_correctly_signed_hostile_body_is_refused_and_stores_nothing(
    api: Api, pool: asyncpg.Pool, body: Any, status: int, field: str
) -> None:
    response = await deliver(api, body)
    assert response.status_code == status, response.text
    problem = response.json()
    assert problem["code"] == "validation_failed"
    assert problem["errors"][0]["field"] == field, problem
    assert await stored(pool) == 0
    assert await pool.fetchval("SELECT count(*) FROM ledger_transactions") == 0


def nested_text(depth: int) -> bytes:
    """An event with an object nested `depth` deep beside its envelope (json.dumps would not write it)."""
    base = json.dumps(invoice_paid_event(), separators=(",", ":")).encode()
    return base[:-1] + b',"deep":' + b'{"a":' * depth + b"1" + b"}" * depth + b"}"


RAW: list[Any] = [
    pytest.param(nested_text(5_000), 422, id="nested-5000-deep"),
    pytest.param(
        b'{"id": "evt_1", "type": "invoice.paid", "created": 1700000000, "x": "\xff\xfe"}', 400, id="bad-utf8"
    ),
    pytest.param(b'{"id": "evt_1", "type": "invoice.paid", "created": 17000', 422, id="truncated-json"),
    pytest.param(b'{"id": "evt_1", "data": {"object": {"a": "\\ud800"}}}', 422, id="unpaired-surrogate"),
    pytest.param(b'{"id": "evt_1", "data": {"object": {"a": "\\u0000"}}}', 422, id="escaped-NUL"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, 422, id="arrays-100000-deep"),
    pytest.param(b'{"id":"evt_1","created":' + b"9" * 5_000 + b"}", 422, id="a-5000-digit-number"),
]


@pytest.mark.parametrize(("payload", "status"), RAW)
async def test_a_correctly_signed_body_that_is_not_even_json_text_is_refused(
    api: Api, pool: asyncpg.Pool, payload: bytes, status: int
) -> None:
    response = await deliver_bytes(api, payload)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert await stored(pool) == 0


async def test_a_body_at_the_nesting_limit_is_taken(api: Api, pool: asyncpg.Pool) -> None:
    # The envelope (1), data (2), the object (3): DEPTH_MAX levels in all.
    sent = event("test.deep", {"id": "obj_1", "deep": nested(DEPTH_MAX - 3)})
    assert (await delivered(api, sent))["status"] == "applied_without_effect"
    assert await stored(pool) == 1


@pytest.mark.parametrize(
    ("offset_s", "accepted"),
    [
        (-TOLERANCE_S - 5, False),
        (-TOLERANCE_S + 30, True),
        (TOLERANCE_S - 30, True),
        (TOLERANCE_S + 5, False),
        (10 * 365 * 86_400, False),
    ],
    ids=["too-old", "old-within", "ahead-within", "too-far-ahead", "ten-years-ahead"],
)
async def test_signatures_dated_beyond_the_tolerance_either_way_are_refused(
    api: Api, pool: asyncpg.Pool, offset_s: int, accepted: bool
) -> None:
    response = await deliver(api, invoice_paid_event(user_id="u1"), timestamp=now_s() + offset_s)
    if accepted:
        assert response.status_code == 200, response.text
        assert await stored(pool) == 1
    else:
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "invalid_signature"
        assert "tolerance" in response.json()["detail"]
        assert await stored(pool) == 0


async def test_a_live_event_under_a_test_key_is_refused(api: Api, pool: asyncpg.Pool) -> None:
    live = checkout_completed_event(user_id="u1") | {"livemode": True}
    response = await deliver(api, live)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "livemode_mismatch"
    assert await stored(pool) == 0


async def test_a_test_event_under_a_live_key_is_refused_and_a_live_one_taken(
    database_url: str, pool: asyncpg.Pool
) -> None:
    async with stripe_api_for(database_url, livemode=True) as live_api:
        response = await deliver(live_api, checkout_completed_event(user_id="u1"))
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "livemode_mismatch"
        assert "uses Stripe's live mode" in response.json()["detail"]
        assert await stored(pool) == 0
        taken = await deliver(live_api, checkout_completed_event(user_id="u1") | {"livemode": True})
        assert taken.status_code == 200, taken.text
    assert await pool.fetchval("SELECT livemode FROM stripe_events") is True


async def test_the_refusals_say_why_in_the_problem(api: Api) -> None:
    response = await deliver(api, invoice_paid_event() | {"created": 2**63})
    assert "7258118400" in response.json()["detail"]
    response = await deliver_bytes(api, nested_text(5_000))
    assert f"nested deeper than {DEPTH_MAX} levels" in response.json()["detail"]
    body = json.dumps(invoice_paid_event()).encode()
    assert (await deliver_bytes(api, body, signature="t=1,v1=00")).json()["code"] == "invalid_signature"
