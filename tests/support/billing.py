"""Helpers for Stripe tests: deliver and expect, read balances and stored events, sweep as the service does,
and the two questions every scenario ends with: is reconciliation clean, and if not, what does it list."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

import ledger
from entitlements import billing
from entitlements.app import sweeper_for
from entitlements.settings import GenerationSettings
from tests.support.generations import assert_audit_ok
from tests.support.http import Api
from tests.support.stripe_fake import deliver
from tests.support.stripe_payloads import unique


async def delivered(api: Api, event: dict[str, Any], status: int = 200) -> dict[str, Any]:
    response = await deliver(api, event)
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


async def entitlements(api: Api, user: str) -> dict[str, Any]:
    response = await api.get(f"/v1/users/{user}/entitlements", "service")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def available(api: Api, user: str) -> int:
    moments: int = (await entitlements(api, user))["balance"]["available"]
    return moments


async def event_row(pool: asyncpg.Pool, event_id: str) -> asyncpg.Record:
    row = await pool.fetchrow("SELECT * FROM stripe_events WHERE id = $1", event_id)
    assert row is not None
    return row


async def transactions_of(pool: asyncpg.Pool, reference: str) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM ledger_transactions WHERE reference = $1 ORDER BY id", reference)


async def sweep(api: Api, pool: asyncpg.Pool) -> dict[str, int]:
    """One sweeper pass as the app's would run (its settings, catalog, and a Stripe gateway like its own),
    with the pending events' retry time brought forward (their backoff is seconds long). The app's pool
    and clients live on the test client's loop, so the pass gets its own."""
    state = api.client.app.state
    await pool.execute("UPDATE stripe_events SET next_attempt_at = now() WHERE state = 'pending'")
    gateway = billing.make_gateway(state.settings.stripe)
    try:
        async with ledger.Ledger(pool) as led:
            sweeper = sweeper_for(
                pool, led, GenerationSettings.from_env(), state.settings.stripe, gateway, state.catalog
            )
            return await sweeper.sweep_once()
    finally:
        if gateway is not None:
            await gateway.aclose()


async def reconciliation(api: Api) -> dict[str, Any]:
    response = await api.get("/v1/reconciliation/stripe", "finance")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def assert_reconciled(api: Api) -> dict[str, Any]:
    """Reconciliation is clean and the audit passes: what every scenario that should be clean ends with."""
    report = await reconciliation(api)
    assert report["ok"] is True, report["mismatches"]
    await assert_audit_ok(api)
    return report


async def mismatches(api: Api) -> list[tuple[str, str | None]]:
    """(code, event id) of every mismatch reconciliation lists; the audit still passes (a waiting or failed
    event is not a ledger inconsistency)."""
    report = await reconciliation(api)
    assert report["ok"] is False
    await assert_audit_ok(api)
    return [(mismatch["code"], mismatch["event_id"]) for mismatch in report["mismatches"]]


async def metric(api: Api, sample: str) -> float:
    """One sample of /metrics, e.g. `moments_stripe_events{state="failed"}`."""
    text = (await api.client.get("/metrics")).text
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    raise AssertionError(f"{sample} is not in /metrics")


async def spend(pool: asyncpg.Pool, user: str, moments: int) -> None:
    """What delivered videos do to a balance: a hold drawn in spending order, captured."""
    key = unique("spend")
    async with ledger.Ledger(pool) as led:
        hold = await led.submit(
            ledger.Hold(
                key=f"{key}-hold",
                user_id=user,
                actor="test",
                amount=moments,
                expires_at=datetime.now(UTC) + timedelta(minutes=5),
            )
        )
        assert hold.hold_id is not None
        await led.submit(ledger.Capture(key=f"{key}-capture", user_id=user, actor="test", hold_id=hold.hold_id))
