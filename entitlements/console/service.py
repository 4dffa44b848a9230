"""The support console's use cases: sessions, search, and the pages' contents.

Sessions: an API key of role support, finance or admin is exchanged for a random token (its SHA-256 kept
in `console_sessions`, the token itself only in the browser's HttpOnly cookie) with a CSRF token of its
own. Every request finds the session and its key again, so signing out, idling past
CONSOLE_SESSION_IDLE_S, passing CONSOLE_SESSION_ABSOLUTE_S or revoking the key ends it at once, in every
process. The console's actions call the same services as the API (grants, refunds, approvals); what is
here only reads, and puts what the pages show together.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import structlog

import ledger
from entitlements import approvals, billing, generations, idempotency, keys, tiers
from entitlements.console import queries
from entitlements.errors import CsrfRefused, Forbidden, SessionRequired, Unauthorized
from entitlements.keys import Caller
from entitlements.schemas import is_user_id
from entitlements.settings import ConsoleSettings

log = structlog.get_logger("moments.console")

# Who may sign in: the people (a service key is another program's).
CONSOLE_ROLES = frozenset({"support", "finance", "admin"})
TOKEN_BYTES = 32
# A session's last use is stamped at most this often (so a busy page does not write on every request);
# the idle expiry is this much coarser than its setting at worst.
TOUCH_RESOLUTION_S = 5
RAW_KEY_CHARS_MAX = 512
SEARCH_CHARS_MAX = 400
PURGE_BATCH_MAX = 500
# Kinds of ledger transaction that Stripe's events make: their reference is the event's id.
STRIPE_KINDS = frozenset({"purchase", "subscription_grant", "clawback", "clawback_reversal"})


@dataclass(frozen=True)
class ConsoleSession:
    caller: Caller
    csrf_token: str
    created_at: datetime
    expires_at: datetime


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_form_token() -> str:
    """A random token for a form that has no session yet (sign-in's double-submit CSRF token)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def tokens_match(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison of a CSRF token; a missing one never matches."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def check_csrf(session: ConsoleSession, given: str | None) -> None:
    if not tokens_match(session.csrf_token, given):
        raise CsrfRefused("this form's security token is missing or not this session's; reload the page and retry")


async def sign_in(pool: asyncpg.Pool, raw_key: str, settings: ConsoleSettings) -> tuple[str, ConsoleSession]:
    """A new session for the key's holder: the raw session token (for the cookie) and the session."""
    raw_key = raw_key.strip()
    caller = await keys.find_caller(pool, raw_key) if 0 < len(raw_key) <= RAW_KEY_CHARS_MAX else None
    if caller is None:
        raise Unauthorized("that API key is unknown or revoked")
    if caller.role not in CONSOLE_ROLES:
        raise Forbidden(f"a {caller.role} key cannot sign in to the console; use a support, finance or admin key")
    token = secrets.token_urlsafe(TOKEN_BYTES)
    csrf_token = secrets.token_urlsafe(TOKEN_BYTES)
    row = await pool.fetchrow(
        queries.INSERT_SESSION, _token_hash(token), caller.key_id, csrf_token, settings.session_absolute_s
    )
    assert row is not None
    log.info("console_signed_in", key_id=caller.key_id, role=caller.role)
    return token, ConsoleSession(
        caller=caller, csrf_token=csrf_token, created_at=row["created_at"], expires_at=row["expires_at"]
    )


async def session_of(pool: asyncpg.Pool, token: str | None, settings: ConsoleSettings) -> ConsoleSession:
    """The live session of this cookie, or SessionRequired saying why there is none."""
    if not token or len(token) > RAW_KEY_CHARS_MAX:
        raise SessionRequired("sign in with your API key")
    row = await pool.fetchrow(
        queries.FIND_SESSION,
        _token_hash(token),
        settings.session_idle_s,
        settings.session_absolute_s,
        TOUCH_RESOLUTION_S,
    )
    if row is None:
        raise SessionRequired("you are signed out (or your key was revoked); sign in again")
    if not row["live"]:
        raise SessionRequired("your session expired; sign in again", expired=True)
    caller = Caller(row["key_id"], row["name"], row["role"])
    return ConsoleSession(
        caller=caller, csrf_token=row["csrf_token"], created_at=row["created_at"], expires_at=row["expires_at"]
    )


async def sign_out(pool: asyncpg.Pool, token: str | None) -> None:
    if token and len(token) <= RAW_KEY_CHARS_MAX:
        await pool.execute(queries.END_SESSION, _token_hash(token))


async def purge_sessions(pool: asyncpg.Pool, settings: ConsoleSettings) -> int:
    """The sweeper's: removes sessions over for more than a day; returns how many."""
    status = await pool.execute(queries.PURGE_SESSIONS, settings.session_idle_s, PURGE_BATCH_MAX)
    return int(status.rsplit(" ", 1)[1])


# Search ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    user_id: str
    # What the text matched, in words ("Stripe charge", "generation", …).
    matched: str


async def search(pool: asyncpg.Pool, ledger_service: ledger.Ledger, text: str) -> list[Match]:
    """Every user the text names: as a user id, a generation id, a Stripe customer, Checkout session,
    payment intent, charge or dispute id, an Idempotency-Key, or a ledger transaction's key or reference."""
    text = text.strip()
    if not text or len(text) > SEARCH_CHARS_MAX or "\x00" in text:
        return []
    generation_user, stripe_users, key_users, ledger_users, known = await asyncio.gather(
        generations.user_of(pool, text),
        billing.users_of_stripe_id(pool, text),
        idempotency.users_of_key(pool, text),
        ledger_service.users_of(text),
        _known_user(pool, ledger_service, text),
    )
    found: list[Match] = []
    if known:
        found.append(Match(text, "user id"))
    if generation_user is not None:
        found.append(Match(generation_user, "generation id"))
    found += [Match(user_id, matched) for user_id, matched in stripe_users]
    found += [Match(user_id, f"Idempotency-Key of {operation.replace('_', ' ')}") for user_id, operation in key_users]
    found += [Match(user_id, f"{matched} of ledger transaction {tx}") for user_id, tx, matched in ledger_users]
    return list(dict.fromkeys(found))


async def _known_user(pool: asyncpg.Pool, ledger_service: ledger.Ledger, text: str) -> bool:
    if not is_user_id(text):
        return False
    if await ledger_service.has_user(text):
        return True
    return (await tiers.subscription_of(pool, text)).source != "none"


# The user page ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JournalView:
    items: list[ledger.JournalItem]
    next_cursor: str | None
    # The Stripe event behind each credit or clawback, by event id.
    events: dict[str, billing.EventSummary]
    # The approval behind each approved grant or refund, by transaction id.
    approvals: dict[int, approvals.ApprovalOut]


@dataclass(frozen=True)
class GenerationsView:
    items: list[generations.GenerationOut]
    next_cursor: str | None
    image_id: str | None
    # What each generation's hold drew from which lots and what went back, by generation id.
    shares: dict[str, list[ledger.ShareItem]]


@dataclass(frozen=True)
class UserPage:
    """What the user page shows; a part is None when the viewer's role may not read it through the API."""

    user_id: str
    subscription: tiers.SubscriptionView | None
    balances: ledger.Balances | None
    lots: list[ledger.LotItem] | None
    lots_truncated: bool
    open_holds: list[generations.OpenHold] | None
    journal: JournalView | None
    generations: GenerationsView | None
    approvals: list[approvals.ApprovalOut] | None


# The API operation each part of the page is read through, so a role sees what it may read through the API.
SUBSCRIPTION_OPERATION = "getEntitlements"
LEDGER_OPERATION = "getUserLedger"
GENERATIONS_OPERATION = "listGenerations"
APPROVALS_OPERATION = "listApprovals"
USER_PAGE_OPERATIONS = (SUBSCRIPTION_OPERATION, LEDGER_OPERATION, GENERATIONS_OPERATION, APPROVALS_OPERATION)


async def journal(
    pool: asyncpg.Pool, ledger_service: ledger.Ledger, user_id: str, *, limit: int, cursor: str | None
) -> JournalView:
    page = await ledger_service.journal(user_id, limit=limit, cursor=cursor)
    event_ids = sorted({item.reference for item in page.items if item.kind in STRIPE_KINDS and item.reference})
    approved = [item.transaction_id for item in page.items if item.kind in {"grant", "refund"}]
    events, by_transaction = await asyncio.gather(
        billing.events_by_id(pool, event_ids), approvals.of_transactions(pool, approved)
    )
    return JournalView(items=page.items, next_cursor=page.next_cursor, events=events, approvals=by_transaction)


async def generations_view(
    pool: asyncpg.Pool,
    ledger_service: ledger.Ledger,
    user_id: str,
    *,
    image_id: str | None,
    limit: int,
    cursor: str | None,
) -> GenerationsView:
    page = await generations.list_for_user(pool, user_id, image_id=image_id, limit=limit, cursor=cursor)
    holds = await generations.hold_ids(pool, [item.id for item in page.items])
    shares = await ledger_service.hold_shares(sorted(holds.values()))
    return GenerationsView(
        items=page.items,
        next_cursor=page.next_cursor,
        image_id=image_id,
        shares={generation_id: shares.get(hold_id, []) for generation_id, hold_id in holds.items()},
    )


async def user_page(
    pool: asyncpg.Pool,
    ledger_service: ledger.Ledger,
    user_id: str,
    *,
    may: Sequence[str],
    limit: int,
) -> UserPage:
    reads_ledger = LEDGER_OPERATION in may
    subscription = await tiers.subscription_of(pool, user_id) if SUBSCRIPTION_OPERATION in may else None
    balances = await ledger_service.balances(user_id) if reads_ledger else None
    lots, truncated = await ledger_service.lots(user_id, now=datetime.now(UTC)) if reads_ledger else (None, False)
    holds = await generations.open_holds(pool, user_id) if reads_ledger else None
    journal_view = await journal(pool, ledger_service, user_id, limit=limit, cursor=None) if reads_ledger else None
    generations_page = (
        await generations_view(pool, ledger_service, user_id, image_id=None, limit=limit, cursor=None)
        if GENERATIONS_OPERATION in may
        else None
    )
    user_approvals = await approvals.of_user(pool, user_id) if APPROVALS_OPERATION in may else None
    return UserPage(
        user_id=user_id,
        subscription=subscription,
        balances=balances,
        lots=lots,
        lots_truncated=truncated,
        open_holds=holds,
        journal=journal_view,
        generations=generations_page,
        approvals=user_approvals,
    )
