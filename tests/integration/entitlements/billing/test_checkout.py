"""POST /v1/users/{user_id}/checkout-sessions through the stripe library, against a local fake Stripe."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from tests.support.generations import assert_audit_ok
from tests.support.http import Api
from tests.support.stripe_fake import API_KEY, FakeStripe, stripe_api_for

PATH = "/v1/users/{user}/checkout-sessions"


@pytest.fixture
async def api(database_url: str, fake: FakeStripe) -> AsyncIterator[Api]:
    async with stripe_api_for(database_url, fake=fake) as client:
        yield client


async def set_tier(api: Api, user: str, tier: str) -> None:
    response = await api.put(f"/v1/users/{user}/subscription", "admin", {"tier": tier})
    assert response.status_code == 200, response.text


async def checkout(api: Api, user: str, body: object, key: str | None = "k-1", role: str = "service") -> Any:
    return await api.post(PATH.format(user=user), role, body, key)


async def test_a_pack_checkout_creates_the_customer_and_a_payment_session(
    api: Api, fake: FakeStripe, pool: asyncpg.Pool
) -> None:
    await set_tier(api, "u1", "PREMIUM")
    response = await checkout(api, "u1", {"pack": "pack_5000"}, "buy-1")
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"url", "id"}
    assert body["id"].startswith("cs_test")
    assert body["url"].endswith(body["id"])
    (customer,) = fake.calls("/v1/customers")
    assert customer.form == {"metadata[user_id]": "u1"}
    assert customer.idempotency_key is not None
    assert customer.authorization == f"Bearer {API_KEY}"
    (session,) = fake.calls("/v1/checkout/sessions")
    assert session.idempotency_key is not None
    assert session.idempotency_key != customer.idempotency_key
    assert session.form["mode"] == "payment"
    assert session.form["line_items[0][price]"] == "price_pack_5000"
    assert session.form["line_items[0][quantity]"] == "1"
    assert session.form["metadata[user_id]"] == "u1"
    assert session.form["metadata[pack]"] == "pack_5000"
    assert session.form["payment_intent_data[metadata][pack]"] == "pack_5000"
    assert session.form["client_reference_id"] == "u1"
    assert session.form["success_url"] == "https://app.test/checkout/success"
    # The customer is remembered: the webhook maps its events to u1.
    customer_id = await pool.fetchval("SELECT customer_id FROM stripe_customers WHERE user_id = 'u1'")
    assert session.form["customer"] == customer_id
    await assert_audit_ok(api)


async def test_a_tier_checkout_is_a_subscription_session_even_for_a_free_user(api: Api, fake: FakeStripe) -> None:
    response = await checkout(api, "u2", {"tier": "ULTIMATE"})
    assert response.status_code == 201, response.text
    (session,) = fake.calls("/v1/checkout/sessions")
    assert session.form["mode"] == "subscription"
    assert session.form["line_items[0][price]"] == "price_ultimate_monthly"
    assert session.form["subscription_data[metadata][user_id]"] == "u2"
    assert session.form["subscription_data[metadata][tier]"] == "ULTIMATE"


async def test_a_free_user_may_not_buy_a_pack(api: Api, fake: FakeStripe) -> None:
    response = await checkout(api, "u3", {"pack": "pack_1000"})
    assert response.status_code == 403
    assert response.json()["code"] == "tier_required"
    assert fake.requests == []
    # A refusal is not stored: after subscribing, the same key goes through.
    await set_tier(api, "u3", "PREMIUM")
    assert (await checkout(api, "u3", {"pack": "pack_1000"})).status_code == 201


async def test_the_same_idempotency_key_replays_and_another_body_is_409(api: Api, fake: FakeStripe) -> None:
    await set_tier(api, "u1", "PREMIUM")
    first = await checkout(api, "u1", {"pack": "pack_1000"}, "same")
    again = await checkout(api, "u1", {"pack": "pack_1000"}, "same")
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert len(fake.calls("/v1/checkout/sessions")) == 1
    other = await checkout(api, "u1", {"pack": "pack_5000"}, "same")
    assert other.status_code == 409
    assert other.json()["code"] == "idempotency_key_reused"
    # A new key is a new session for the same customer.
    assert (await checkout(api, "u1", {"pack": "pack_1000"}, "another")).status_code == 201
    assert len(fake.calls("/v1/checkout/sessions")) == 2
    assert len(fake.calls("/v1/customers")) == 1


async def test_concurrent_requests_with_one_key_create_one_session(api: Api, fake: FakeStripe) -> None:
    await set_tier(api, "u1", "PREMIUM")
    responses = await asyncio.gather(*(checkout(api, "u1", {"pack": "pack_1000"}, "burst") for _ in range(3)))
    assert [r.status_code for r in responses] == [201, 201, 201]
    assert len({r.json()["id"] for r in responses}) == 1
    assert len(fake.calls("/v1/checkout/sessions")) == 1


async def test_a_retry_after_a_stripe_failure_reuses_stripes_idempotency(api: Api, fake: FakeStripe) -> None:
    await set_tier(api, "u1", "PREMIUM")
    fake.fail_next = 1  # the customer call fails with a 400
    failed = await checkout(api, "u1", {"pack": "pack_1000"}, "retry-me")
    assert failed.status_code == 502
    assert failed.json()["code"] == "stripe_error"
    ok = await checkout(api, "u1", {"pack": "pack_1000"}, "retry-me")
    assert ok.status_code == 201, ok.text
    keys = [call.idempotency_key for call in fake.calls("/v1/customers")]
    assert len(keys) == 2
    assert keys[0] == keys[1]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "pack"),
        ({"pack": "pack_1000", "tier": "PREMIUM"}, "tier"),
        ({"pack": "pack_999"}, "pack"),
        ({"tier": "FREE"}, "tier"),
        ({"tier": "GOLD"}, "tier"),
        ({"pack": 5}, "pack"),
        ({"pack": "pack_1000", "coupon": "x"}, "coupon"),
    ],
)
async def test_invalid_bodies_are_422_naming_the_field(api: Api, fake: FakeStripe, body: object, field: str) -> None:
    await set_tier(api, "u1", "PREMIUM")
    response = await checkout(api, "u1", body)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == "validation_failed"
    assert problem["errors"][0]["field"] == field
    assert fake.requests == []


async def test_the_idempotency_key_is_required_and_roles_are_checked(api: Api) -> None:
    missing = await checkout(api, "u1", {"tier": "PREMIUM"}, key=None)
    assert missing.status_code == 400
    assert missing.json()["code"] == "idempotency_key_required"
    forbidden = await checkout(api, "u1", {"tier": "PREMIUM"}, role="finance")
    assert forbidden.status_code == 403
    assert forbidden.json()["code"] == "forbidden"


async def test_without_an_api_key_checkout_is_503(database_url: str) -> None:
    async with stripe_api_for(database_url) as api:
        response = await checkout(api, "u1", {"tier": "PREMIUM"})
    assert response.status_code == 503
    assert response.json()["code"] == "stripe_not_configured"
