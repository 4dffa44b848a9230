"""The parts of Stripe's objects this service reads, as msgspec views, and the event envelope. Pure.

Unknown fields are ignored (Stripe adds fields in every API version); fields that moved between API
versions are accepted in both places (`2025-03-31.basil` moved the subscription's period onto its items,
an invoice's subscription under `parent.subscription_details`, a line's price under
`pricing.price_details`, proration under the line's `parent`, and removed `Charge.invoice`).

The body of a verified webhook is decoded once, at the edge, by `parse_envelope`, which refuses what
cannot be stored or keyed on (`InvalidEvent`); each handler (`handlers.py`) converts `data.object` to the
view of its event type, whose bounds refuse values no real Stripe object has.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec

# Stripe ids are letters, digits and underscores (`evt_1Pgc76B7WZ01zgkWwyRHS12y`); 255 is the column's bound.
STRIPE_ID_CHARS_MAX = 255
STRIPE_ID_PATTERN = r"^[A-Za-z0-9_-]+$(?!\n)"
EVENT_TYPE_PATTERN = r"^[a-z0-9_]+(\.[a-z0-9_]+)*$(?!\n)"
# Stripe did not exist before 2010; nothing it sends is dated past 2200. Outside, a timestamp is hostile.
TIMESTAMP_MIN_S = 1_262_304_000  # 2010-01-01
TIMESTAMP_MAX_S = 7_258_118_400  # 2200-01-01
# Amounts in the currency's smallest unit: Stripe's largest charge is far below this.
AMOUNT_MAX = 10**15
QUANTITY_MAX = 1_000_000
METADATA_CHARS_MAX = 500  # Stripe's own limit on a metadata value

StripeId = Annotated[str, msgspec.Meta(min_length=1, max_length=STRIPE_ID_CHARS_MAX, pattern=STRIPE_ID_PATTERN)]
EventType = Annotated[str, msgspec.Meta(min_length=1, max_length=255, pattern=EVENT_TYPE_PATTERN)]
Timestamp = Annotated[int, msgspec.Meta(ge=0, le=TIMESTAMP_MAX_S)]
EventTime = Annotated[int, msgspec.Meta(ge=TIMESTAMP_MIN_S, le=TIMESTAMP_MAX_S)]
Amount = Annotated[int, msgspec.Meta(ge=0, le=AMOUNT_MAX)]
Quantity = Annotated[int, msgspec.Meta(ge=1, le=QUANTITY_MAX)]
Metadata = dict[str, Annotated[str, msgspec.Meta(max_length=METADATA_CHARS_MAX)]]
# A status, mode or currency: one of Stripe's short words (the service stores and compares them).
Word = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class _Stripe(msgspec.Struct, frozen=True, kw_only=True):
    pass


class Ref(_Stripe, frozen=True, kw_only=True):
    """An expanded object where Stripe usually sends an id."""

    id: StripeId


Expandable = StripeId | Ref | None


def ref_id(value: Expandable) -> str | None:
    return value.id if isinstance(value, Ref) else value


class EventData(_Stripe, frozen=True, kw_only=True):
    object: dict[str, Any]


class Envelope(_Stripe, frozen=True, kw_only=True):
    id: StripeId
    type: EventType
    created: EventTime
    livemode: bool
    data: EventData


class Price(_Stripe, frozen=True, kw_only=True):
    id: StripeId


class SubscriptionItem(_Stripe, frozen=True, kw_only=True):
    price: Price
    # Since API version 2025-03-31.basil the period lives on the item, not on the subscription.
    current_period_end: Timestamp | None = None


class SubscriptionItems(_Stripe, frozen=True, kw_only=True):
    data: list[SubscriptionItem] = []


class Subscription(_Stripe, frozen=True, kw_only=True):
    id: StripeId
    customer: Expandable = None
    status: Word
    items: SubscriptionItems = msgspec.field(default_factory=SubscriptionItems)
    current_period_end: Timestamp | None = None  # before 2025-03-31.basil
    cancel_at_period_end: bool = False
    metadata: Metadata | None = None


class LinePeriod(_Stripe, frozen=True, kw_only=True):
    start: Timestamp
    end: Timestamp


class PriceDetails(_Stripe, frozen=True, kw_only=True):
    price: StripeId | Price


class LinePricing(_Stripe, frozen=True, kw_only=True):
    price_details: PriceDetails | None = None


class ItemDetails(_Stripe, frozen=True, kw_only=True):
    """A line's `parent.subscription_item_details` or `parent.invoice_item_details` (since basil)."""

    proration: bool = False
    subscription: StripeId | None = None


class LineParent(_Stripe, frozen=True, kw_only=True):
    type: Word | None = None
    subscription_item_details: ItemDetails | None = None
    invoice_item_details: ItemDetails | None = None


class InvoiceLine(_Stripe, frozen=True, kw_only=True):
    period: LinePeriod
    price: Price | None = None  # before 2025-03-31.basil
    pricing: LinePricing | None = None  # since 2025-03-31.basil
    proration: bool = False  # before 2025-03-31.basil
    type: Word | None = None  # before 2025-03-31.basil: "subscription" or "invoiceitem"
    parent: LineParent | None = None  # since 2025-03-31.basil

    @property
    def price_id(self) -> str | None:
        if self.pricing is not None and self.pricing.price_details is not None:
            price = self.pricing.price_details.price
            return price.id if isinstance(price, Price) else price
        return self.price.id if self.price is not None else None

    @property
    def is_proration(self) -> bool:
        """A proration under either parent, or the legacy flag: whichever says so."""
        parent = self.parent
        details = (parent.subscription_item_details, parent.invoice_item_details) if parent is not None else ()
        return self.proration or any(d is not None and d.proration for d in details)

    @property
    def is_invoice_item(self) -> bool:
        """A one-off invoice item (not the subscription's own charge for a period)."""
        if self.parent is not None and self.parent.type is not None:
            return self.parent.type == "invoice_item_details"
        return self.type == "invoiceitem"


class InvoiceLines(_Stripe, frozen=True, kw_only=True):
    data: list[InvoiceLine] = []


class SubscriptionDetails(_Stripe, frozen=True, kw_only=True):
    subscription: Expandable = None
    metadata: Metadata | None = None


class InvoiceParent(_Stripe, frozen=True, kw_only=True):
    subscription_details: SubscriptionDetails | None = None


class Invoice(_Stripe, frozen=True, kw_only=True):
    id: StripeId
    customer: Expandable = None
    amount_paid: Amount = 0
    currency: Word | None = None
    subscription: Expandable = None  # before 2025-03-31.basil; since then parent.subscription_details
    subscription_details: SubscriptionDetails | None = None  # before 2025-03-31.basil (its metadata)
    # Before 2025-03-31.basil the invoice named its payment; since, an InvoicePayment does.
    charge: Expandable = None
    payment_intent: Expandable = None
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
    """A Checkout session's line item (object `item`): never in a webhook; retrieved, or expanded."""

    price: Price | None = None
    quantity: Quantity = 1


class LineItems(_Stripe, frozen=True, kw_only=True):
    data: list[LineItem] = []
    has_more: bool = False


class CheckoutSession(_Stripe, frozen=True, kw_only=True):
    id: StripeId
    mode: Word
    payment_status: Word
    customer: Expandable = None
    client_reference_id: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    metadata: Metadata | None = None
    payment_intent: Expandable = None
    payment_link: Expandable = None
    amount_total: Amount | None = None
    currency: Word | None = None
    # Only present when the session was expanded: webhooks never carry it, so it is retrieved.
    line_items: LineItems | None = None


class Charge(_Stripe, frozen=True, kw_only=True):
    id: StripeId
    amount: Amount
    amount_refunded: Amount = 0
    payment_intent: Expandable = None
    invoice: Expandable = None  # before 2025-03-31.basil: set on the charges of invoices


class Dispute(_Stripe, frozen=True, kw_only=True):
    id: StripeId
    charge: StripeId | Ref
    payment_intent: Expandable = None
    status: Word


class InvoicePaymentTarget(_Stripe, frozen=True, kw_only=True):
    type: Word
    payment_intent: Expandable = None
    charge: Expandable = None


class InvoicePayment(_Stripe, frozen=True, kw_only=True):
    """Which payment paid which invoice (object `invoice_payment`, since 2025-03-31.basil)."""

    id: StripeId
    invoice: StripeId | Ref
    payment: InvoicePaymentTarget
    status: Word | None = None


class InvoicePayments(_Stripe, frozen=True, kw_only=True):
    data: list[InvoicePayment] = []


class Customer(_Stripe, frozen=True, kw_only=True):
    id: StripeId
    metadata: Metadata | None = None


class InvalidEvent(ValueError):
    """A correctly signed body that is not a Stripe event this service can store. `field` names the part."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _problem_in(document: object, depth_max: int) -> str | None:
    """What makes a decoded body unstorable: nesting deeper than `depth_max`, or text PostgreSQL cannot
    hold (NUL, lone surrogates). Iterative, so no body can exhaust the stack."""
    stack: list[tuple[object, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            if depth > depth_max:
                return f"is nested deeper than {depth_max} levels"
            for key, item in value.items():
                if _bad_text(key):
                    return "has a key with a NUL or an unpaired surrogate"
                stack.append((item, depth + 1))
        elif isinstance(value, list):
            if depth > depth_max:
                return f"is nested deeper than {depth_max} levels"
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, str) and _bad_text(value):
            return "has text with a NUL or an unpaired surrogate"
    return None


def _bad_text(text: str) -> bool:
    if "\x00" in text:
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


_AT_FIELD = re.compile(r"at `\$\.([A-Za-z_]+)")
_MISSING_FIELD = re.compile(r"required field `([A-Za-z_]+)`")


def _field_of(invalid: msgspec.ValidationError) -> str:
    """The top-level field msgspec's message names (`… - at `$.created``), else the body."""
    found = _AT_FIELD.search(str(invalid)) or _MISSING_FIELD.search(str(invalid))
    return found.group(1) if found is not None else "body"


def parse_envelope(payload: bytes, *, depth_max: int) -> Envelope:
    """The event in a verified body, or InvalidEvent for what no Stripe event is and nothing can store:
    not JSON, nested deeper than `depth_max`, NUL or unpaired surrogates anywhere, an id that is empty,
    too long or not Stripe's alphabet, a `created` outside 2010-2200."""
    try:
        document = msgspec.json.decode(payload)
    except msgspec.DecodeError as invalid:
        raise InvalidEvent("body", f"is not JSON: {invalid}") from None
    except RecursionError:
        raise InvalidEvent("body", f"is nested deeper than {depth_max} levels") from None
    problem = _problem_in(document, depth_max)
    if problem is not None:
        raise InvalidEvent("body", problem)
    try:
        envelope = msgspec.convert(document, Envelope)
    except msgspec.ValidationError as invalid:
        raise InvalidEvent(_field_of(invalid), f"not a Stripe event: {invalid}") from None
    object_id = envelope.data.object.get("id")
    if object_id is not None:
        try:
            msgspec.convert(object_id, StripeId)
        except msgspec.ValidationError as invalid:
            raise InvalidEvent("data.object.id", f"is not a Stripe id: {invalid}") from None
    return envelope
