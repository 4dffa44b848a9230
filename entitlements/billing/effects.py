"""What every Stripe event handler works with: its Context, the Effect it answers, the three ways it can
decline (`NotYetApplicable`, `NeverApplicable`, `NeedsStripe`), and the user an object belongs to.

**How an event ends.** A handler answers an Effect: `applied` (it changed something: the ledger, a tier, a
mapping) or `applied_without_effect` (it was understood and there was nothing to do; the reason is
recorded). It raises `NotYetApplicable` when the event may apply later (an unknown customer, a purchase
not recorded yet, a price the catalog does not know, Stripe not answering): the event is retried with
backoff and ends `failed` after STRIPE_EVENT_ATTEMPTS_MAX attempts. It raises `NeverApplicable` when
no retry can help (an object Stripe never sends: a negative amount, a malformed `metadata.user_id`): the
event ends `failed` at once. Either way an admin may re-apply it after a fix (`service.reapply_event`).

**Reference convention.** Every ledger transaction an event produces has `reference` = the Stripe event
id (`evt_…`), and the Effect records the kind and moments it posted (stored on the event as
`ledger_kind`, `ledger_moments`). Reconciliation and the audit match the two on that reference. Ledger
idempotency keys are derived from Stripe object ids (`stripe:invoice:{id}`, `stripe:checkout:{id}`, …),
so neither a re-application of an event nor a second event about the same object can credit twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
import msgspec

import ledger
import pricing
from entitlements.billing import queries
from entitlements.billing.gateway import Lookup, LookupFailed
from entitlements.schemas import is_user_id
from ledger import Connection

ACTOR = "stripe:webhook"
# Ledger transaction kinds only Stripe events produce.
STRIPE_KINDS = ("purchase", "subscription_grant", "clawback", "clawback_reversal")
LedgerKind = Literal["purchase", "subscription_grant", "clawback", "clawback_reversal"]


class NotYetApplicable(Exception):
    """The event cannot be applied now; it may later. It stays stored with this as `last_error`, is
    retried with backoff, and ends `failed` after its attempts; reconciliation lists it meanwhile."""


class NeverApplicable(Exception):
    """No retry can apply the event as it is (an object Stripe never sends): it ends `failed` at once."""


class NeedsStripe(Exception):
    """The handler needs something only Stripe can tell (a session's line items, a payment's invoice):
    `apply_event` retrieves it outside the transaction and applies the event again with the answer."""

    def __init__(self, lookup: Lookup) -> None:
        super().__init__(lookup)
        self.lookup = lookup


@dataclass(frozen=True)
class Effect:
    """What applying an event did: its outcome for people, and the ledger transaction it posted (if any)."""

    outcome: str
    ledger_kind: LedgerKind | None = None
    ledger_moments: int | None = None
    without_effect: bool = False


def without_effect(reason: str) -> Effect:
    """The event is applied by doing nothing: it ends `applied_without_effect`, with the reason."""
    return Effect(f"without effect: {reason}", without_effect=True)


@dataclass(frozen=True)
class StoredEvent:
    id: str
    type: str
    created: datetime
    object: dict[str, Any]


@dataclass(frozen=True)
class Context:
    """What a handler works with: the event's connection (its transaction is open), the ledger, the
    catalog, the event, the time it is applied at, and what Stripe answered to earlier lookups."""

    connection: Connection
    ledger: ledger.Ledger
    catalog: pricing.Catalog
    event: StoredEvent
    now: datetime
    looked_up: Mapping[Lookup, Any] = field(default_factory=dict)

    def stripe(self, lookup: Lookup) -> Any:
        """Stripe's answer to `lookup`, once `apply_event` has asked; NotYetApplicable if Stripe did not
        answer or refused."""
        if lookup not in self.looked_up:
            raise NeedsStripe(lookup)
        answer = self.looked_up[lookup]
        if isinstance(answer, LookupFailed):
            raise NotYetApplicable(str(answer))
        return answer


def convert(event: StoredEvent, model: type[Any]) -> Any:
    """The event's object as `model`; a shape no Stripe object has can never apply."""
    try:
        return msgspec.convert(event.object, model)
    except msgspec.ValidationError as invalid:
        raise NeverApplicable(f"{event.type}: unexpected object shape: {invalid}") from None


def timestamp(value: int | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


async def post(context: Context, operation: ledger.AnyOperation) -> ledger.Result | str:
    """One ledger operation inside the event's transaction. A str answer means another event already
    performed it (same key, another reference): nothing new was written."""
    (outcome,) = await context.ledger.execute_in(context.connection, [operation], now=context.now)
    if isinstance(outcome, ledger.IdempotencyConflict):
        earlier = await context.ledger.reference_of(operation.key, connection=context.connection)
        return f"already applied by Stripe event {earlier}"
    if isinstance(outcome, ledger.LedgerRuleError):
        # Credits and clawbacks are never refused for the user's state: the rules refuse this payload.
        raise NeverApplicable(f"the ledger refused {operation.key}: {outcome}")
    return outcome


# Customers: whose object this is ----------------------------------------------------------------------


def valid_user_id(value: str | None, source: str) -> str | None:
    if value is None or value == "":
        return None
    if not is_user_id(value):
        raise NeverApplicable(f"{source} {value[:200]!r} is not a valid user id")
    return value


def customer_owner(customer_id: str | None, mapped: str | None, from_metadata: str | None) -> str:
    """The user an object belongs to: its customer's stored mapping, else the (valid) metadata user_id.
    The two disagreeing, or neither known, leaves the event waiting."""
    if mapped is not None and from_metadata is not None and mapped != from_metadata:
        raise NotYetApplicable(
            f"customer {customer_id} belongs to {mapped!r} but the object's metadata names {from_metadata!r}"
        )
    user_id = mapped or from_metadata
    if user_id is None:
        raise NotYetApplicable(
            f"unknown buyer: customer {customer_id} has no stripe_customers row and the object names no user"
            " (metadata.user_id or client_reference_id)"
        )
    return user_id


async def user_for(connection: Connection, customer_id: str | None, metadata_user_id: str | None) -> str:
    """The user an object belongs to: its customer's mapping, else the object's metadata user_id (which
    this service sets on every customer, session and subscription it creates)."""
    from_metadata = valid_user_id(metadata_user_id, "metadata.user_id")
    mapped: str | None = None
    if customer_id is not None:
        mapped = await connection.fetchval(queries.USER_OF_CUSTOMER, customer_id)
    user_id = customer_owner(customer_id, mapped, from_metadata)
    if mapped is None and customer_id is not None:
        await remember_customer(connection, customer_id, user_id)
    return user_id


async def remember_customer(connection: Connection | asyncpg.Pool, customer_id: str, user_id: str) -> None:
    await connection.execute(queries.REMEMBER_CUSTOMER, customer_id, user_id)
