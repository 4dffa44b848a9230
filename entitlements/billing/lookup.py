"""Stripe's side of a user, for the console: who a Stripe id belongs to, and the events behind ledger
transactions (every Stripe-made transaction references its event's id)."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from entitlements.billing import queries
from entitlements.billing.schemas import EventSummary

STRIPE_ID_CHARS_MAX = 255
USERS_FOUND_MAX = 20


async def users_of_stripe_id(pool: asyncpg.Pool, text: str) -> list[tuple[str, str]]:
    """(user id, what matched) for a Stripe customer, Checkout session, payment intent, charge or dispute
    id; at most USERS_FOUND_MAX."""
    if not 1 <= len(text) <= STRIPE_ID_CHARS_MAX:
        return []
    rows = await pool.fetch(queries.USERS_OF_STRIPE_ID, text, USERS_FOUND_MAX)
    return [(row["user_id"], row["matched"]) for row in rows]


async def events_by_id(pool: asyncpg.Pool, event_ids: Sequence[str]) -> dict[str, EventSummary]:
    if not event_ids:
        return {}
    rows = await pool.fetch(queries.EVENTS_BY_ID, list(event_ids))
    return {
        row["id"]: EventSummary(id=row["id"], type=row["type"], created=row["created"], outcome=row["outcome"])
        for row in rows
    }
