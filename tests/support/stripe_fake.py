"""Stripe without Stripe: a local fake of the API calls the service makes, webhook signing exactly as
Stripe signs, and an in-process API wired to both. The events themselves are in `stripe_payloads.py`.

Tests never reach Stripe: the service's client points at the fake through STRIPE_API_BASE.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import asyncpg
from litestar.testing import AsyncTestClient

from entitlements.app import create_app
from entitlements.keys import ROLES, create_key
from entitlements.settings import StripeSettings
from tests.support.app import settings_for
from tests.support.http import Api
from tests.support.stripe_payloads import CURRENT, invoice_payment, line_item, unique

WEBHOOK_SECRET = "whsec_test_moments"
API_KEY = "sk_test_moments_fake"
_LINE_ITEMS_PATH = re.compile(r"^/v1/checkout/sessions/([A-Za-z0-9_-]+)/line_items$")


# --- the fake API ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    idempotency_key: str | None
    authorization: str | None
    stripe_version: str | None
    # The form body of a POST, the query of a GET.
    form: dict[str, str]


def _missing(kind: str, object_id: str) -> tuple[int, dict[str, Any]]:
    message = f"No such {kind}: '{object_id}'"
    return 404, {"error": {"type": "invalid_request_error", "code": "resource_missing", "message": message}}


@dataclass
class FakeStripe:
    """On 127.0.0.1, the calls the service makes, answered as Stripe answers them: POST /v1/customers and
    POST /v1/checkout/sessions with Stripe's idempotency (the same Idempotency-Key answers the first
    response again), GET /v1/checkout/sessions/{id}/line_items and GET /v1/invoice_payments?payment[…]
    from what a test registered (`sell`, `pay_invoice`), 404 resource_missing for anything else."""

    requests: list[Recorded] = field(default_factory=list)
    # Answer the next N calls with this HTTP status and a Stripe error body.
    fail_next: int = 0
    fail_status: int = 400
    _answers: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    _line_items: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _invoice_payments: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def sell(self, session_id: str, *lines: tuple[str, int], unit_amount: int = 999) -> None:
        """What a session made elsewhere sold: (price id, quantity) per line item."""
        with self._lock:
            self._line_items[session_id] = [
                line_item(price, quantity=quantity, unit_amount=unit_amount) for price, quantity in lines
            ]

    def pay_invoice(self, invoice_id: str, payment_intent: str, *, amount: int = 1999) -> None:
        """The InvoicePayment Stripe keeps once a payment intent paid an invoice."""
        with self._lock:
            self._invoice_payments.append(
                invoice_payment(invoice_id=invoice_id, payment_intent=payment_intent, amount=amount)
            )

    def handle(self, method: str, target: str, headers: dict[str, str], body: str) -> tuple[int, dict[str, Any]]:
        path, query = urlsplit(target).path, urlsplit(target).query
        form = dict(parse_qsl(body if method == "POST" else query, keep_blank_values=True))
        key = headers.get("idempotency-key")
        with self._lock:
            self.requests.append(
                Recorded(method, path, key, headers.get("authorization"), headers.get("stripe-version"), form)
            )
            if self.fail_next > 0:
                self.fail_next -= 1
                return self.fail_status, {"error": {"type": "api_error", "message": "injected failure"}}
            if method == "POST" and key is not None and key in self._answers:
                return self._answers[key]
            answer = self._answer(method, path, form)
            if method == "POST" and key is not None:
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
        items = _LINE_ITEMS_PATH.match(path)
        if method == "GET" and items is not None:
            session_id = items.group(1)
            if session_id not in self._line_items:
                return _missing("checkout.session", session_id)
            limit = int(form.get("limit", "10"))
            data = self._line_items[session_id]
            return 200, {"object": "list", "data": data[:limit], "has_more": len(data) > limit, "url": path}
        if (method, path) == ("GET", "/v1/invoice_payments"):
            wanted = form.get("payment[payment_intent]")
            found = [p for p in self._invoice_payments if p["payment"]["payment_intent"] == wanted]
            return 200, {"object": "list", "data": found, "has_more": False, "url": path}
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
            status, answer = fake.handle(method, self.path, headers, body)
            encoded = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("stripe-version", headers.get("stripe-version") or CURRENT)
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


def stripe_settings_for(fake: FakeStripe | None, *, api_key: str | None = API_KEY, **changes: Any) -> StripeSettings:
    """Test mode, the test webhook secret, and outgoing calls to `fake` (or, without one, no API key and a
    closed local port, so nothing can reach Stripe by mistake); `changes` override any setting."""
    settings = StripeSettings(
        api_key=api_key if fake is not None else None,
        webhook_secret=WEBHOOK_SECRET,
        api_base=fake.url if fake is not None else "http://127.0.0.1:9",
        webhook_tolerance_s=300,
        success_url="https://app.test/checkout/success",
        cancel_url="https://app.test/checkout/cancel",
    )
    return dataclasses.replace(settings, **changes)


@asynccontextmanager
async def stripe_api_for(
    database_url: str, *, fake: FakeStripe | None = None, api_key: str | None = API_KEY, **changes: Any
) -> AsyncIterator[Api]:
    """The app with the webhook secret set and, when `fake` is given, outgoing calls pointed at it."""
    base = settings_for(database_url)
    stripe_settings = stripe_settings_for(fake, api_key=api_key, **changes)
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
    return sign_bytes(payload.encode(), secret=secret, timestamp=timestamp)


def sign_bytes(payload: bytes, *, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    """`sign` over raw bytes, for bodies that are not UTF-8 (Stripe's HMAC is over the bytes)."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


async def deliver(api: Api, event: dict[str, Any], *, signature: str | None = "sign", **sign_options: Any) -> Any:
    """POSTs the event as Stripe would: the exact bytes signed, then sent."""
    return await deliver_bytes(
        api, json.dumps(event, separators=(",", ":")).encode(), signature=signature, **sign_options
    )


async def deliver_bytes(api: Api, payload: bytes, *, signature: str | None = "sign", **sign_options: Any) -> Any:
    """POSTs any body, correctly signed unless `signature` says otherwise."""
    headers = {"content-type": "application/json"}
    if signature == "sign":
        headers["stripe-signature"] = sign_bytes(payload, **sign_options)
    elif signature is not None:
        headers["stripe-signature"] = signature
    return await api.client.post("/v1/stripe/webhook", content=payload, headers=headers)


async def link_customer(pool: asyncpg.Pool, customer: str, user_id: str) -> None:
    """What creating the customer through the service records (metadata user_id)."""
    await pool.execute("INSERT INTO stripe_customers (customer_id, user_id) VALUES ($1, $2)", customer, user_id)
