"""Schemathesis hooks for the contract test (named by `hooks` in schemathesis.toml beside this file).

- The keys the run acts with are never revoked or rotated by the run itself (their ids come in
  CONTRACT_PROTECTED_KEY_IDS): a fuzzer that revoked its own key would test nothing but 401s after that.
- A Stripe webhook case that carries a Stripe-Signature header is signed, as Stripe would sign it, over
  the exact bytes sent (CONTRACT_STRIPE_WEBHOOK_SECRET), so fuzzed bodies reach the code behind the
  signature check: a correctly signed hostile body must be a 4xx, never a 500. A case without the header
  stays without it (400 invalid_signature).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from typing import Any

import schemathesis

_PROTECTED = frozenset(int(key_id) for key_id in os.environ.get("CONTRACT_PROTECTED_KEY_IDS", "").split(",") if key_id)
_SECRET = os.environ.get("CONTRACT_STRIPE_WEBHOOK_SECRET", "")
_KEY_OPERATIONS = {"/v1/keys/{key_id}/revoke", "/v1/keys/{key_id}/rotate"}
WEBHOOK_PATH = "/v1/stripe/webhook"


def stripe_signature(payload: bytes, secret: str) -> str:
    """Stripe's scheme: t=<unix time>,v1=<hex HMAC-SHA256 of b"<t>." + the body's bytes>."""
    timestamp = int(time.time())
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    if case.operation.path in _KEY_OPERATIONS:
        key_id = (case.path_parameters or {}).get("key_id")
        return not (isinstance(key_id, int) and key_id in _PROTECTED)
    return True


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    if case.operation.path != WEBHOOK_PATH or not _SECRET:
        return
    headers = case.headers or {}
    name = next((header for header in headers if header.lower() == "stripe-signature"), None)
    if name is None:
        return
    if isinstance(case.body, bytes):
        payload = case.body
    elif case.body is None or not str(case.media_type or "").endswith("json"):
        return
    else:
        # Sent as these bytes (not re-serialised by the transport), so the signature covers what arrives.
        payload = json.dumps(case.body, separators=(",", ":")).encode()
        case.body = payload
    headers[name] = stripe_signature(payload, _SECRET)
    case.headers = headers
