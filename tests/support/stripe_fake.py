"""Stripe without Stripe: a local fake of the two API calls the service makes, webhook signing exactly as
Stripe signs, event builders in Stripe's shapes, and an in-process API wired to both.

Tests never reach Stripe: the service's client points at the fake through STRIPE_API_BASE.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import itertools
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import asyncpg
from litestar.testing import AsyncTestClient

from entitlements.app import create_app
from entitlements.keys import ROLES, create_key
from entitlements.settings import StripeSettings
from tests.support.app import settings_for
from tests.support.http import Api

WEBHOOK_SECRET = "whsec_test_moments"
API_KEY = "sk_test_moments_fake"
API_VERSION = "2026-10-28.endive"
PERIOD_S = 30 * 86_400
_ids = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}_{next(_ids)}_{time.monotonic_ns()}"


# --- the fake API ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    idempotency_key: str | None
    authorization: str | None
    form: dict[str, str]


@dataclass
class FakeStripe:
    """POST /v1/customers and POST /v1/checkout/sessions on 127.0.0.1, with Stripe's idempotency: the
    same Idempotency-Key answers the first response again."""

    requests: list[Recorded] = field(default_factory=list)
    # Answer the next N calls with this HTTP status and a Stripe error body.
    fail_next: int = 0
    fail_status: int = 400
    _answers: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def handle(self, method: str, path: str, headers: dict[str, str], body: str) -> tuple[int, dict[str, Any]]:
        form = dict(parse_qsl(body, keep_blank_values=True))
        key = headers.get("idempotency-key")
        with self._lock:
            self.requests.append(Recorded(method, path, key, headers.get("authorization"), form))
            if self.fail_next > 0:
                self.fail_next -= 1
                return self.fail_status, {"error": {"type": "invalid_request_error", "message": "injected failure"}}
            if key is not None and key in self._answers:
                return self._answers[key]
            answer = self._answer(method, path, form)
            if key is not None:
                self._answers[key] = answer
            return answer

    def _answer(self, method: str, path: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        metadata = {name[len("metadata[") : -1]: value for name, value in form.items() if name.startswith("metadata[")}
        if (method, path) == ("POST", "/v1/customers"):
            return 200, {"id": unique("cus_fake"), "object": "customer", "metadata": metadata}
        if (method, path) == ("POST", "/v1/checkout/sessions"):
            session_id = unique("cs_test")
            return 200, {
                "id": session_id,
                "object": "checkout.session",
                "mode": form.get("mode"),
                "customer": form.get("customer"),
                "metadata": metadata,
                "url": f"https://checkout.stripe.test/c/pay/{session_id}",
            }
        return 404, {"error": {"type": "invalid_request_error", "message": f"no fake for {method} {path}"}}

    def calls(self, path: str) -> list[Recorded]:
        return [request for request in self.requests if request.path == path]


@contextmanager
def fake_stripe() -> Iterator[FakeStripe]:
    fake = FakeStripe()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self._serve("POST")

        def do_GET(self) -> None:
            self._serve("GET")

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length).decode()
            headers = {name.lower(): value for name, value in self.headers.items()}
            status, answer = fake.handle(method, self.path.split("?")[0], headers, body)
            encoded = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(encoded)))
            self.end_headers()
            self.wfile.write(encoded)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="fake-stripe", daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# --- the service, wired to the fake ------------------------------------------------------------------------


@asynccontextmanager
async def stripe_api_for(
    database_url: str, *, fake: FakeStripe | None = None, api_key: str | None = API_KEY
) -> AsyncIterator[Api]:
    """The app with the webhook secret set and, when `fake` is given, outgoing calls pointed at it."""
    base = settings_for(database_url)
    stripe_settings = StripeSettings(
        api_key=api_key if fake is not None else None,
        webhook_secret=WEBHOOK_SECRET,
        api_base=fake.url if fake is not None else "http://127.0.0.1:9",  # never Stripe, even by mistake
        webhook_tolerance_s=300,
        success_url="https://app.test/checkout/success",
        cancel_url="https://app.test/checkout/cancel",
    )
    app = create_app(dataclasses.replace(base, stripe=stripe_settings))
    connection = await asyncpg.connect(database_url)
    try:
        keys: dict[str, str] = {
            role: (await create_key(connection, role=role, name=f"test-{role}")).key for role in ROLES
        }
    finally:
        await connection.close()
    async with AsyncTestClient(app=app) as client:
        yield Api(client, keys)


# --- signing and delivering ------------------------------------------------------------------------------


def sign(payload: str, *, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    """The Stripe-Signature header Stripe would send: t=<unix time>,v1=<hex HMAC-SHA256 of "t.payload">."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


async def deliver(api: Api, event: dict[str, Any], *, signature: str | None = "sign", **sign_options: Any) -> Any:
    """POSTs the event as Stripe would: the exact bytes signed, then sent."""
    payload = json.dumps(event, separators=(",", ":"))
    headers = {"content-type": "application/json"}
    if signature == "sign":
        headers["stripe-signature"] = sign(payload, **sign_options)
    elif signature is not None:
        headers["stripe-signature"] = signature
    return await api.client.post("/v1/stripe/webhook", content=payload.encode(), headers=headers)


# --- events in Stripe's shapes ---------------------------------------------------------------------------


def now_s() -> int:
    return int(time.time())


def envelope(
    event_type: str, obj: dict[str, Any], *, event_id: str | None = None, created: int | None = None
) -> dict[str, Any]:
    return {
        "id": event_id or unique("evt"),
        "object": "event",
        "api_version": API_VERSION,
        "created": now_s() if created is None else created,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
        "data": {"object": obj},
    }


def subscription_event(
    event_type: str = "customer.subscription.updated",
    *,
    subscription_id: str = "sub_1",
    customer: str = "cus_1",
    status: str = "active",
    price: str = "price_premium_monthly",
    period_end: int | None = None,
    cancel_at_period_end: bool = False,
    user_id: str | None = None,
    created: int | None = None,
    event_id: str | None = None,
    period_on_item: bool = True,
) -> dict[str, Any]:
    """A subscription; since 2025-03-31.basil the period is on the item (`period_on_item`), before on the
    subscription itself."""
    period_end = now_s() + PERIOD_S if period_end is None else period_end
    item: dict[str, Any] = {
        "id": "si_" + subscription_id,
        "object": "subscription_item",
        "price": {"id": price, "object": "price", "recurring": {"interval": "month"}},
        "quantity": 1,
    }
    subscription: dict[str, Any] = {
        "id": subscription_id,
        "object": "subscription",
        "customer": customer,
        "status": status,
        "cancel_at_period_end": cancel_at_period_end,
        "cancel_at": period_end if cancel_at_period_end else None,
        "items": {"object": "list", "data": [item], "has_more": False},
        "metadata": {"user_id": user_id} if user_id else {},
    }
    if period_on_item:
        item["current_period_start"] = period_end - PERIOD_S
        item["current_period_end"] = period_end
    else:
        subscription["current_period_start"] = period_end - PERIOD_S
        subscription["current_period_end"] = period_end
    return envelope(event_type, subscription, event_id=event_id, created=created)


def invoice_paid_event(
    *,
    invoice_id: str | None = None,
    customer: str = "cus_1",
    subscription_id: str = "sub_1",
    price: str = "price_premium_monthly",
    period_end: int | None = None,
    basil: bool = True,
    user_id: str | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """invoice.paid; `basil` (2025-03-31 and later) names the subscription under parent.subscription_details
    and the line's price under pricing.price_details; before, at the top level and line.price."""
    period_end = now_s() + PERIOD_S if period_end is None else period_end
    invoice_id = invoice_id or unique("in")
    line: dict[str, Any] = {
        "id": unique("il"),
        "object": "line_item",
        "amount": 1999,
        "period": {"start": period_end - PERIOD_S, "end": period_end},
    }
    invoice: dict[str, Any] = {
        "id": invoice_id,
        "object": "invoice",
        "customer": customer,
        "status": "paid",
        "amount_paid": 1999,
        "currency": "usd",
        "billing_reason": "subscription_cycle",
        "lines": {"object": "list", "data": [line], "has_more": False},
    }
    metadata = {"user_id": user_id} if user_id else {}
    if basil:
        line["pricing"] = {"type": "price_details", "price_details": {"price": price, "product": "prod_1"}}
        line["parent"] = {
            "type": "subscription_item_details",
            "subscription_item_details": {
                "proration": False,
                "subscription": subscription_id,
                "subscription_item": "si_1",
            },
        }
        invoice["parent"] = {
            "type": "subscription_details",
            "subscription_details": {"subscription": subscription_id, "metadata": metadata},
        }
    else:
        line["price"] = {"id": price, "object": "price"}
        line["proration"] = False
        invoice["subscription"] = subscription_id
        invoice["subscription_details"] = {"metadata": metadata}
    return envelope("invoice.paid", invoice, event_id=event_id)


def checkout_completed_event(
    *,
    session_id: str | None = None,
    customer: str = "cus_1",
    user_id: str | None = None,
    pack: str | None = "pack_1000",
    payment_intent: str = "pi_1",
    amount_total: int = 999,
    payment_status: str = "paid",
    mode: str = "payment",
    event_type: str = "checkout.session.completed",
    event_id: str | None = None,
) -> dict[str, Any]:
    metadata: dict[str, str] = {}
    if user_id:
        metadata["user_id"] = user_id
    if pack:
        metadata["pack"] = pack
    session = {
        "id": session_id or unique("cs_test"),
        "object": "checkout.session",
        "mode": mode,
        "status": "complete",
        "payment_status": payment_status,
        "customer": customer,
        "client_reference_id": user_id,
        "metadata": metadata,
        "payment_intent": payment_intent if mode == "payment" else None,
        "subscription": "sub_1" if mode == "subscription" else None,
        "amount_total": amount_total,
        "currency": "usd",
    }
    return envelope(event_type, session, event_id=event_id)


def charge_refunded_event(
    *,
    charge_id: str = "ch_1",
    payment_intent: str = "pi_1",
    amount: int = 999,
    amount_refunded: int,
    event_id: str | None = None,
) -> dict[str, Any]:
    charge = {
        "id": charge_id,
        "object": "charge",
        "amount": amount,
        "amount_captured": amount,
        "amount_refunded": amount_refunded,
        "refunded": amount_refunded >= amount,
        "currency": "usd",
        "payment_intent": payment_intent,
        "customer": "cus_1",
        "status": "succeeded",
    }
    return envelope("charge.refunded", charge, event_id=event_id)


def dispute_event(
    event_type: str,
    *,
    dispute_id: str = "dp_1",
    charge_id: str = "ch_1",
    payment_intent: str = "pi_1",
    status: str = "needs_response",
    amount: int = 999,
    event_id: str | None = None,
) -> dict[str, Any]:
    dispute = {
        "id": dispute_id,
        "object": "dispute",
        "amount": amount,
        "currency": "usd",
        "charge": charge_id,
        "payment_intent": payment_intent,
        "reason": "fraudulent",
        "status": status,
    }
    return envelope(event_type, dispute, event_id=event_id)


async def link_customer(pool: asyncpg.Pool, customer: str, user_id: str) -> None:
    """What creating the customer through the service records (metadata user_id)."""
    await pool.execute("INSERT INTO stripe_customers (customer_id, user_id) VALUES ($1, $2)", customer, user_id)
