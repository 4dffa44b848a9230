"""Rate limits at the HTTP edge: which class a route belongs to, and the check after the caller is known.

Every route with a caller (an API key or a console session) is limited per key in its endpoint class:
`opt["rate_class"]` where a route says so (creating a generation; quotes and advice, which are POSTs that
change nothing, count as reads), else reads for GET and writes for everything else. Public routes (health,
metrics, the Stripe webhook, the document) have no key to count against. The decision is left in the ASGI
scope, where `http_semantics` turns it into the response's `RateLimit` headers whatever the answer.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import structlog
from litestar import Request

from entitlements import idempotency, limits
from entitlements.errors import DomainError
from entitlements.http.auth import CALLER_SCOPE_KEY
from entitlements.http.params import idempotency_key_from
from entitlements.keys import Caller

RATE_LIMIT_SCOPE_KEY = "moments.rate_limit"
POLICIES_STATE_KEY = "rate_limit_policies"
LEASES_STATE_KEY = "rate_limit_leases"
READ_METHODS = frozenset({"GET", "HEAD"})
log = structlog.get_logger("moments.limits")


def endpoint_class(handler_opt: dict[str, Any], method: str) -> str | None:
    if handler_opt.get("public"):
        return None
    explicit: str | None = handler_opt.get("rate_class")
    if explicit is not None:
        return explicit
    return "reads" if method in READ_METHODS else "writes"


def idempotency_key_of(scope: Any) -> str | None:
    """The request's Idempotency-Key, or None for one the handler will refuse (counted like any request)."""
    try:
        return idempotency_key_from(scope["headers"])
    except DomainError:
        return None


async def check_rate_limit(request: Request[Any, Any, Any]) -> None:
    policies: dict[str, limits.Policy] = request.app.state[POLICIES_STATE_KEY]
    if not policies:
        return
    caller = request.scope.get(CALLER_SCOPE_KEY)
    handler = request.route_handler
    name = endpoint_class(handler.opt, request.method)
    policy = policies.get(name) if name is not None else None
    if policy is None or not isinstance(caller, Caller):
        return
    key = idempotency_key_of(request.scope) if handler.opt.get("idempotent") else None
    idempotency.forget_answered_from_record()
    try:
        leases: limits.Leases = request.app.state[LEASES_STATE_KEY]
        decision = await leases.check(request.app.state.pool, policy, key_id=caller.key_id, idempotency_key=key)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        # A limit that cannot be read lets the request through (it meets the same database next, and
        # answers for itself): the abuse guard must not turn a database hiccup into refusals of its own.
        log.warning("rate_limit_unchecked", endpoint_class=policy.name, error_type=type(error).__name__)
        return
    request.scope[RATE_LIMIT_SCOPE_KEY] = decision  # type: ignore[literal-required]
    if not decision.allowed:
        raise limits.RateLimited(
            f"too many {policy.name} requests for this API key (burst {policy.burst}, {policy.per_s:g} a second);"
            f" retry after {decision.retry_after_s} s"
        )


async def give_back_if_answered_from_record(scope: Any) -> None:
    """After the request: one a lease served that was answered from a stored record (a replay, or a key's
    409) uses none of the allowance, as one checked by the database's statement never does."""
    decision = scope.get(RATE_LIMIT_SCOPE_KEY)
    if not isinstance(decision, limits.Decision) or not decision.leased or not idempotency.answered_from_record():
        return
    caller = scope.get(CALLER_SCOPE_KEY)
    if not isinstance(caller, Caller):
        return
    state = scope["app"].state
    try:
        await state[LEASES_STATE_KEY].give_back(state.pool, decision.policy, key_id=caller.key_id)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        log.warning("rate_limit_not_given_back", endpoint_class=decision.policy.name, error_type=type(error).__name__)
