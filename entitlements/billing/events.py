"""The parts of Stripe's objects this service reads, as msgspec views, and the event envelope. Pure.

Unknown fields are ignored (Stripe adds fields in every API version); fields that moved between API
versions are accepted in both places. The body of a verified webhook is decoded once, at the edge, by
`parse_envelope`; each handler (`handlers.py`) converts `data.object` to the view of its event type.
"""

from __future__ import annotations

from typing import Any

import msgspec


class _Stripe(msgspec.Struct, frozen=True, kw_only=True):
    pass


class Ref(_Stripe, frozen=True, kw_only=True):
    """An expanded object where Stripe usually sends an id."""

    id: str


Expandable = str | Ref | None


def ref_id(value: Expandable) -> str | None:
    return value.id if isinstance(value, Ref) else value


class EventData(_Stripe, frozen=True, kw_only=True):
    object: dict[str, Any]


class Envelope(_Stripe, frozen=True, kw_only=True):
    id: str
    type: str
    created: int
    livemode: bool = False
    data: EventData


class Price(_Stripe, frozen=True, kw_only=True):
    id: str


class SubscriptionItem(_Stripe, frozen=True, kw_only=True):
    price: Price
    # Since API version 2025-03-31.basil the period lives on the item, not on the subscription.
    current_period_end: int | None = None


class SubscriptionItems(_Stripe, frozen=True, kw_only=True):
    data: list[SubscriptionItem] = []


class Subscription(_Stripe, frozen=True, kw_only=True):
    id: str
    customer: Expandable = None
    status: str
    items: SubscriptionItems = msgspec.field(default_factory=SubscriptionItems)
    current_period_end: int | None = None
    cancel_at_period_end: bool = False
    metadata: dict[str, str] | None = None


class LinePeriod(_Stripe, frozen=True, kw_only=True):
    start: int
    end: int


class PriceDetails(_Stripe, frozen=True, kw_only=True):
    price: str | Price


class LinePricing(_Stripe, frozen=True, kw_only=True):
    price_details: PriceDetails | None = None


class SubscriptionItemDetails(_Stripe, frozen=True, kw_only=True):
    proration: bool = False
    subscription: str | None = None


class LineParent(_Stripe, frozen=True, kw_only=True):
    subscription_item_details: SubscriptionItemDetails | None = None


class InvoiceLine(_Stripe, frozen=True, kw_only=True):
    period: LinePeriod
    price: Price | None = None  # before 2025-03-31.basil
    pricing: LinePricing | None = None  # since 2025-03-31.basil
    proration: bool = False  # before 2025-03-31.basil
    parent: LineParent | None = None  # since 2025-03-31.basil

    @property
    def price_id(self) -> str | None:
        if self.pricing is not None and self.pricing.price_details is not None:
            price = self.pricing.price_details.price
            return price.id if isinstance(price, Price) else price
        return self.price.id if self.price is not None else None

    @property
    def is_proration(self) -> bool:
        details = self.parent.subscription_item_details if self.parent is not None else None
        return self.proration or (details is not None and details.proration)


class InvoiceLines(_Stripe, frozen=True, kw_only=True):
    data: list[InvoiceLine] = []


class SubscriptionDetails(_Stripe, frozen=True, kw_only=True):
    subscription: Expandable = None
    metadata: dict[str, str] | None = None


class InvoiceParent(_Stripe, frozen=True, kw_only=True):
    subscription_details: SubscriptionDetails | None = None


class Invoice(_Stripe, frozen=True, kw_only=True):
    id: str
    customer: Expandable = None
    subscription: Expandable = None  # before 2025-03-31.basil; since then parent.subscription_details
    subscription_details: SubscriptionDetails | None = None  # before 2025-03-31.basil (its metadata)
    parent: InvoiceParent | None = None
    lines: InvoiceLines = msgspec.field(default_factory=InvoiceLines)

    @property
    def details(self) -> SubscriptionDetails | None:
        if self.parent is not None and self.parent.subscription_details is not None:
            return self.parent.subscription_details
        return self.subscription_details

    @property
    def subscription_id(self) -> str | None:
        details = self.details
        return ref_id(details.subscription if details is not None else None) or ref_id(self.subscription)


class LineItem(_Stripe, frozen=True, kw_only=True):
    price: Price | None = None


class LineItems(_Stripe, frozen=True, kw_only=True):
    data: list[LineItem] = []


class CheckoutSession(_Stripe, frozen=True, kw_only=True):
    id: str
    mode: str
    payment_status: str
    customer: Expandable = None
    client_reference_id: str | None = None
    metadata: dict[str, str] | None = None
    payment_intent: Expandable = None
    amount_total: int | None = None
    currency: str | None = None
    # Only present when the session was expanded; metadata `pack` is what this service sets.
    line_items: LineItems | None = None


class Charge(_Stripe, frozen=True, kw_only=True):
    id: str
    amount: int
    amount_refunded: int = 0
    payment_intent: Expandable = None
    invoice: Expandable = None  # before 2025-03-31.basil: set on the charges of subscription invoices


class Dispute(_Stripe, frozen=True, kw_only=True):
    id: str
    charge: str | Ref
    payment_intent: Expandable = None
    status: str


class Customer(_Stripe, frozen=True, kw_only=True):
    id: str
    metadata: dict[str, str] | None = None


_envelope_decoder = msgspec.json.Decoder(Envelope)


class InvalidEvent(ValueError):
    """A correctly signed body that is not a Stripe event."""


def parse_envelope(payload: bytes) -> Envelope:
    try:
        return _envelope_decoder.decode(payload)
    except (msgspec.ValidationError, msgspec.DecodeError) as invalid:
        raise InvalidEvent(str(invalid)) from None
