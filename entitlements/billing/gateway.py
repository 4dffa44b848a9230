"""Outgoing calls to Stripe: the configured clients (`StripeGateway`) and the retrievals an event may need.

Webhook events never carry a Checkout session's line items, and since `2025-03-31.basil` a charge no
longer names its invoice: a handler that needs either asks for a `Lookup` (`handlers.Context.stripe`),
and `service.apply_event` performs it here, outside the event's database transaction, then applies the
event again with the answer. Retrievals are GETs (idempotent by nature); the client waits
`STRIPE_LOOKUP_TIMEOUT_S` per call and retries a failed connection or a retryable answer
`STRIPE_LOOKUP_RETRIES_MAX` times, so a webhook waits a bounded time for Stripe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
import stripe
import structlog

from entitlements.billing.events import InvoicePayments, LineItems
from entitlements.settings import StripeSettings

log = structlog.get_logger("moments.stripe")

# One outgoing Checkout call; the stripe library retries connection failures and 409/429/5xx this often
# (with the same idempotency key).
STRIPE_REQUEST_TIMEOUT_S = 20.0
STRIPE_NETWORK_RETRIES_MAX = 2
# Stripe allows at most 100 line items in a Checkout session: one page holds them all.
LINE_ITEMS_PAGE_MAX = 100
INVOICE_PAYMENTS_PAGE_MAX = 10


class _HTTPXClient(stripe.HTTPXClient):
    """stripe's httpx client sends its form-encoded body as `data=`, which httpx deprecates for raw
    bytes; the same body as `content=` is the same request without the warning."""

    def _get_request_args_kwargs(self, *args: Any, **kwargs: Any) -> Any:
        positional, options = super()._get_request_args_kwargs(*args, **kwargs)
        if isinstance(options.get("data"), bytes | str):
            options["content"] = options.pop("data")
        return positional, options


@dataclass(frozen=True)
class StripeGateway:
    """The configured Stripe clients and their HTTP clients (closed with the app): one for Checkout, one
    with a shorter timeout for the retrievals events need while Stripe waits for the webhook's answer."""

    client: stripe.StripeClient
    http_client: stripe.HTTPXClient
    lookup_client: stripe.StripeClient
    lookup_http_client: stripe.HTTPXClient

    async def aclose(self) -> None:
        await self.http_client.close_async()  # type: ignore[no-untyped-call]
        await self.lookup_http_client.close_async()  # type: ignore[no-untyped-call]


def _client(settings: StripeSettings, api_key: str, *, timeout_s: float, retries: int) -> tuple[Any, Any]:
    http_client = _HTTPXClient(timeout=timeout_s)
    client = stripe.StripeClient(
        api_key,
        base_addresses={"api": settings.api_base} if settings.api_base else None,
        http_client=http_client,
        max_network_retries=retries,
    )
    return client, http_client


def make_gateway(settings: StripeSettings) -> StripeGateway | None:
    """None when STRIPE_API_KEY is unset: checkout endpoints then answer 503 stripe_not_configured, and
    events that need a retrieval wait (and end failed after their attempts)."""
    if settings.api_key is None:
        return None
    client, http_client = _client(
        settings, settings.api_key, timeout_s=STRIPE_REQUEST_TIMEOUT_S, retries=STRIPE_NETWORK_RETRIES_MAX
    )
    lookup_client, lookup_http_client = _client(
        settings, settings.api_key, timeout_s=settings.lookup_timeout_s, retries=settings.lookup_retries_max
    )
    return StripeGateway(client, http_client, lookup_client, lookup_http_client)


# ---------------------------------------------------------------------------------------------------
# Retrievals.


@dataclass(frozen=True)
class LineItemsOf:
    """The line items of a Checkout session: (price id, quantity) of each."""

    session_id: str


@dataclass(frozen=True)
class InvoiceOfPayment:
    """The invoice a payment intent paid (its InvoicePayment), or None if it paid no invoice."""

    payment_intent_id: str


Lookup = LineItemsOf | InvoiceOfPayment


class LookupFailed(Exception):
    """Stripe did not answer, or refused; the event waits and is tried again."""


async def look_up(gateway: StripeGateway | None, lookup: Lookup) -> Any:
    """Performs one retrieval through the stripe library. Answers `tuple[tuple[str | None, int], ...]`
    for LineItemsOf and `str | None` for InvoiceOfPayment."""
    if gateway is None:
        raise LookupFailed(f"STRIPE_API_KEY is not set: cannot ask Stripe for {_describe(lookup)}")
    client = gateway.lookup_client
    try:
        match lookup:
            case LineItemsOf(session_id):
                page = await client.v1.checkout.sessions.line_items.list_async(
                    session_id, {"limit": LINE_ITEMS_PAGE_MAX}
                )
                items = msgspec.convert(page.to_dict(), LineItems)
                if items.has_more:
                    raise LookupFailed(f"session {session_id} has more than {LINE_ITEMS_PAGE_MAX} line items")
                return tuple((item.price.id if item.price else None, item.quantity) for item in items.data)
            case InvoiceOfPayment(payment_intent_id):
                listed = await client.v1.invoice_payments.list_async(
                    {
                        "payment": {"type": "payment_intent", "payment_intent": payment_intent_id},
                        "limit": INVOICE_PAYMENTS_PAGE_MAX,
                    }
                )
                payments = msgspec.convert(listed.to_dict(), InvoicePayments)
                paid = [p for p in payments.data if p.status in (None, "paid")] or payments.data
                invoice = paid[0].invoice if paid else None
                return invoice if isinstance(invoice, str) or invoice is None else invoice.id
    except stripe.StripeError as error:
        log.warning("stripe_lookup_failed", lookup=_describe(lookup), error_type=type(error).__name__)
        if isinstance(error, stripe.APIConnectionError):
            raise LookupFailed(f"Stripe did not answer for {_describe(lookup)}") from None
        raise LookupFailed(
            f"Stripe refused {_describe(lookup)} ({type(error).__name__}: {error.user_message or 'no detail'})"
        ) from None
    except msgspec.ValidationError as invalid:
        raise LookupFailed(f"Stripe answered {_describe(lookup)} in an unexpected shape: {invalid}") from None
    raise AssertionError(f"unknown lookup {lookup!r}")


def _describe(lookup: Lookup) -> str:
    match lookup:
        case LineItemsOf(session_id):
            return f"the line items of {session_id}"
        case InvoiceOfPayment(payment_intent_id):
            return f"the invoice paid by {payment_intent_id}"
    raise AssertionError(f"unknown lookup {lookup!r}")
