"""Finance's use cases: the ledger in commit order, balances at a moment, the roll-forward of the moments
liability, period close, and the price what-if. Exports are in `exports.py`.

The liability is what users hold: available + held - owed, summed over every user's accounts. Since every
ledger transaction sums to zero, it is also minus the sum of the system accounts' balances, so its
movement over a period is read from the system accounts' postings, flow by flow (`build_rollforward`), and
checked against the users' side at both ends. Every figure of a roll-forward comes from one snapshot
(REPEATABLE READ). A timestamp bound counts what is dated before it (`created_at < at`): a period
[since, until) opens with the balances at `since` and closes with those at `until`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime

import asyncpg
import msgspec

import ledger
import pricing
from entitlements.errors import Conflict, NotFound, ValidationFailed
from entitlements.finance import queries
from entitlements.finance.schemas import (
    AccountBalanceAt,
    AccountMovement,
    Debt,
    FeedPage,
    Flows,
    Identity,
    Liability,
    PeriodOut,
    PeriodsPage,
    Rollforward,
    UserBalanceAt,
    WhatIfCell,
    WhatIfCreate,
    WhatIfOut,
    WhatIfTotal,
)
from entitlements.keys import Caller
from entitlements.schemas import aware

SealHead = Callable[[ledger.Connection], Awaitable[str | None]]
SYSTEM_ACCOUNTS = (
    "system:sales",
    "system:subscription_grants",
    "system:promotions",
    "system:revenue",
    "system:expired",
    "system:clawback",
)
USER_KINDS = ("user_available", "user_held", "user_debt")
PERIOD_CURSOR = "p1"
# The years a period may be of (the schema's pattern says the same).
PERIOD_YEAR_MIN, PERIOD_YEAR_MAX = 2000, 9998


# --- The feed ------------------------------------------------------------------------------------------


async def feed(ledger_service: ledger.Ledger, read: asyncpg.Pool, *, after: str | None, limit: int) -> FeedPage:
    position = _position(after, "after")
    items, last = await ledger_service.feed(position, limit=limit, connection=read)
    return FeedPage(items=items, next=ledger.encode_position(last))


def _position(cursor: str | None, field: str) -> ledger.CommitPosition:
    try:
        return ledger.decode_position(cursor)
    except ledger.InvalidCursor:
        raise ValidationFailed(field, "is not a commit position this service issued") from None


# --- Balances at a moment ------------------------------------------------------------------------------


def _as_of(at: datetime | None, position: str | None) -> tuple[datetime | None, str | None, int | None]:
    """The bind values of an "as of" read: an instant (now when neither is given) or a commit position."""
    if at is not None and position is not None:
        raise ValidationFailed("position", "give either at or position, not both")
    if position is not None:
        found = _position(position, "position")
        return None, str(found.xid), found.transaction_id
    return aware(at, "at") or datetime.now(UTC), None, None


async def user_balance_at(
    read: asyncpg.Pool, user_id: str, *, at: datetime | None, position: str | None
) -> UserBalanceAt:
    instant, xid, transaction_id = _as_of(at, position)
    row = await read.fetchrow(queries.USER_BALANCE_AT, user_id, instant, xid, transaction_id)
    assert row is not None
    return UserBalanceAt(
        user_id=user_id,
        at=instant,
        position=position,
        available=row["available"],
        held=row["held"],
        owed=row["owed"],
    )


async def account_balance_at(
    read: asyncpg.Pool, code: str, *, at: datetime | None, position: str | None
) -> AccountBalanceAt:
    if code not in SYSTEM_ACCOUNTS:
        raise NotFound(f"no system account {code!r}; the system accounts are {', '.join(SYSTEM_ACCOUNTS)}")
    instant, xid, transaction_id = _as_of(at, position)
    balance = await read.fetchval(queries.ACCOUNT_BALANCE_AT, code, instant, xid, transaction_id)
    return AccountBalanceAt(account=code, at=instant, position=position, balance=balance)


# --- The roll-forward ----------------------------------------------------------------------------------


class Sums(msgspec.Struct, frozen=True, kw_only=True):
    """One account's (or one kind of user account's) postings: dated before `since` (opening), before
    `until` (closing), and the debits and credits dated in between (both positive)."""

    opening: int = 0
    closing: int = 0
    debits: int = 0
    credits: int = 0


def _liability(sums: Mapping[str, Sums], end: str) -> Liability:
    available, held, debt = (getattr(sums.get(kind, Sums()), end) for kind in USER_KINDS)
    return Liability(available=available, held=held, owed=-debt, liability=available + held + debt)


def build_rollforward(sums: Mapping[str, Sums], *, since: datetime, until: datetime, final: bool) -> Rollforward:
    """The roll-forward from each account's sums: pure, so that every identity can be shown to fail."""

    def of(code: str) -> Sums:
        return sums.get(code, Sums())

    sales, grants, promotions = of("system:sales"), of("system:subscription_grants"), of("system:promotions")
    revenue, expired, clawback = of("system:revenue"), of("system:expired"), of("system:clawback")
    flows = Flows(
        sold=sales.debits - sales.credits,
        subscription_grants=grants.debits - grants.credits,
        promotions=promotions.debits - promotions.credits,
        refunds_to_users=revenue.debits,
        clawback_reversals=clawback.debits,
        revenue=revenue.credits,
        breakage=expired.credits - expired.debits,
        clawbacks=clawback.credits,
    )
    inflows = flows.sold + flows.subscription_grants + flows.promotions + flows.refunds_to_users
    inflows += flows.clawback_reversals
    outflows = flows.revenue + flows.breakage + flows.clawbacks
    opening, closing = _liability(sums, "opening"), _liability(sums, "closing")
    debt_sums = of("user_debt")
    debt = Debt(opening=opening.owed, created=debt_sums.debits, repaid=debt_sums.credits, closing=closing.owed)
    movements = [
        AccountMovement(
            account=code,
            opening=of(code).opening,
            debits=of(code).debits,
            credits=of(code).credits,
            closing=of(code).closing,
        )
        for code in SYSTEM_ACCOUNTS
    ]
    system_opening = sum(movement.opening for movement in movements)
    system_closing = sum(movement.closing for movement in movements)
    identities = [
        Identity(
            name="liability",
            holds=opening.liability + inflows - outflows == closing.liability,
            left=opening.liability + inflows - outflows,
            right=closing.liability,
            detail="opening liability + inflows - outflows = closing liability",
        ),
        Identity(
            name="opening_balances",
            holds=opening.liability == -system_opening,
            left=opening.liability,
            right=-system_opening,
            detail="users' balances at since = minus the system accounts' balances at since",
        ),
        Identity(
            name="closing_balances",
            holds=closing.liability == -system_closing,
            left=closing.liability,
            right=-system_closing,
            detail="users' balances at until = minus the system accounts' balances at until",
        ),
        Identity(
            name="system_accounts",
            holds=all(m.opening + m.credits - m.debits == m.closing for m in movements),
            left=sum(m.opening + m.credits - m.debits for m in movements),
            right=system_closing,
            detail="each system account: opening + credits - debits = closing",
        ),
        Identity(
            name="debt",
            holds=debt.opening + debt.created - debt.repaid == debt.closing,
            left=debt.opening + debt.created - debt.repaid,
            right=debt.closing,
            detail="debt owed at since + created - repaid = owed at until",
        ),
    ]
    failing = [identity.name for identity in identities if not identity.holds]
    return Rollforward(
        since=since,
        until=until,
        opening=opening,
        inflows=inflows,
        outflows=outflows,
        flows=flows,
        debt=debt,
        closing=closing,
        system_accounts=movements,
        identities=identities,
        ties=not failing,
        failing=failing,
        final=final,
    )


def _window(since: datetime | None, until: datetime | None) -> tuple[datetime, datetime]:
    if since is None:
        raise ValidationFailed("since", "is required: the period's first instant, RFC 3339")
    if until is None:
        raise ValidationFailed("until", "is required: the instant after the period, RFC 3339")
    since, until = aware(since, "since"), aware(until, "until")
    assert since is not None
    assert until is not None
    if since > until:
        raise ValidationFailed("until", "must not be before since")
    return since, until


async def _rollforward_in(
    connection: ledger.Connection, since: datetime, until: datetime, *, final: bool
) -> Rollforward:
    rows = await connection.fetch(queries.ROLLFORWARD_SUMS, since, until)
    sums = {
        row["account"]: Sums(
            opening=row["opening"], closing=row["closing"], debits=row["debits"], credits=row["credits"]
        )
        for row in rows
    }
    return build_rollforward(sums, since=since, until=until, final=final)


async def rollforward(pool: asyncpg.Pool, *, since: datetime | None, until: datetime | None) -> Rollforward:
    since, until = _window(since, until)
    async with pool.acquire() as connection:
        # Checked before the snapshot is taken: a transaction seen ended here is visible in the snapshot.
        final = await _still_running_before(connection, until) is None
        async with connection.transaction(isolation="repeatable_read", readonly=True):
            return await _rollforward_in(connection, since, until, final=final)


def rollforward_csv(report: Rollforward) -> str:
    """The roll-forward as two columns, `item,moments`, top to bottom as a finance person reads it."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["item", "moments"])
    writer.writerow(["since", report.since.isoformat()])
    writer.writerow(["until", report.until.isoformat()])
    for name in ("available", "held", "owed", "liability"):
        writer.writerow([f"opening_{name}", getattr(report.opening, name)])
    for flow in msgspec.structs.fields(Flows):
        sign = "-" if flow.name in {"revenue", "breakage", "clawbacks"} else "+"
        writer.writerow([f"{sign}{flow.name}", getattr(report.flows, flow.name)])
    for name in ("available", "held", "owed", "liability"):
        writer.writerow([f"closing_{name}", getattr(report.closing, name)])
    for name in ("opening", "created", "repaid", "closing"):
        writer.writerow([f"debt_{name}", getattr(report.debt, name)])
    for movement in report.system_accounts:
        for name in ("opening", "debits", "credits", "closing"):
            writer.writerow([f"{movement.account}:{name}", getattr(movement, name)])
    for identity in report.identities:
        writer.writerow([f"ties:{identity.name}", "true" if identity.holds else "false"])
    writer.writerow(["ties", "true" if report.ties else "false"])
    writer.writerow(["final", "true" if report.final else "false"])
    return out.getvalue()


# --- Period close --------------------------------------------------------------------------------------


def period_bounds(period: str) -> tuple[datetime, datetime]:
    """A month "2026-11" as [its first instant, the next month's first instant), UTC."""
    year, month = int(period[:4]), int(period[5:7])
    if not PERIOD_YEAR_MIN <= year <= PERIOD_YEAR_MAX:
        raise ValidationFailed("period", f"must be a month of the years {PERIOD_YEAR_MIN}-{PERIOD_YEAR_MAX}")
    since = datetime(year, month, 1, tzinfo=UTC)
    return since, datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)


async def _still_running_before(connection: ledger.Connection, end: datetime) -> str | None:
    """Why rows dated before `end` could still commit (None: they cannot). The commit horizon has passed
    `end` once no database transaction that began before it is still open: `created_at` is the writing
    transaction's start, so only such a transaction could still commit a row dated before `end`."""
    if end > datetime.now(UTC):
        return f"{end.isoformat()} has not come yet"
    row = await connection.fetchrow(queries.STILL_RUNNING_BEFORE, end)
    assert row is not None
    if row["sessions"]:
        return f"{row['sessions']} database transaction(s) that began before {end.isoformat()} are still open"
    if row["prepared"]:
        return f"{row['prepared']} prepared transaction(s) are open"
    return None


def _period_out(row: asyncpg.Record) -> PeriodOut:
    return PeriodOut(
        period=row["period"],
        since=row["since"],
        until=row["until"],
        closed_at=row["closed_at"],
        closed_by=row["closed_by"],
        seal_head=row["seal_head"],
        report=msgspec.json.decode(row["report"], type=Rollforward),
    )


async def close_period(pool: asyncpg.Pool, caller: Caller, period: str, *, seal_head: SealHead) -> PeriodOut:
    """Freezes the period's roll-forward with the seal's head, once, and only once nothing still running
    could add a row dated inside it."""
    since, until = period_bounds(period)
    async with pool.acquire() as connection:
        # Outside the snapshot and before it (pg_stat_activity is read afresh, and whatever it shows ended
        # has committed before the snapshot below is taken, so the snapshot holds every row of the period).
        waiting = await _still_running_before(connection, until)
        if waiting is not None:
            raise Conflict(
                f"period {period} cannot be closed yet: the commit horizon has not passed its end ({waiting})"
            )
        async with connection.transaction(isolation="repeatable_read"):
            report = await _rollforward_in(connection, since, until, final=True)
            head = await seal_head(connection)
            row = await connection.fetchrow(
                queries.INSERT_PERIOD, period, since, until, msgspec.json.encode(report).decode(), head, caller.actor
            )
    if row is None:
        raise Conflict(f"period {period} is already closed; a closed period is never recomputed")
    return _period_out(row)


async def list_periods(pool: asyncpg.Pool, *, limit: int, cursor: str | None) -> PeriodsPage:
    before = None
    if cursor is not None:
        try:
            (before,) = ledger.decode_cursor(cursor, PERIOD_CURSOR, 1)
        except ledger.InvalidCursor:
            raise ValidationFailed("cursor", "is not a cursor this service issued") from None
    rows = await pool.fetch(queries.LIST_PERIODS, before, limit + 1)
    items = [_period_out(row) for row in rows[:limit]]
    next_cursor = ledger.encode_cursor(PERIOD_CURSOR, items[-1].period) if len(rows) > limit else None
    return PeriodsPage(items=items, next_cursor=next_cursor)


# --- Price what-if -------------------------------------------------------------------------------------


def draft_table(text: str) -> pricing.PriceTable:
    """The draft, validated exactly as a published table is at start-up; never published."""
    try:
        return pricing.parse_table(text, "draft")
    except pricing.InvalidPriceTable as invalid:
        raise ValidationFailed("table", str(invalid)) from None


def _price(table: pricing.PriceTable, mode: str, resolution: str, duration_s: int, audio: bool) -> int | None:
    cell = table.find_cell(mode, resolution, duration_s, audio)
    return cell.moments if cell is not None else None


async def what_if(read: asyncpg.Pool, current: pricing.PriceTable, body: WhatIfCreate) -> WhatIfOut:
    """The window's delivered generations priced under the current table and the draft, cell by cell."""
    draft = draft_table(body.table)
    since, until = aware(body.since, "since"), aware(body.until, "until")
    assert since is not None
    assert until is not None
    if since > until:
        raise ValidationFailed("until", "must not be before since")
    cells: list[WhatIfCell] = []
    totals = {"generations": 0, "current": 0, "draft": 0, "unpriced_current": 0, "unpriced_draft": 0}
    for row in await read.fetch(queries.GENERATIONS_BY_CELL, since, until):
        key = (row["mode"], row["resolution"], row["duration_s"], row["audio"])
        count = row["generations"]
        now_price, draft_price = _price(current, *key), _price(draft, *key)
        now_total = None if now_price is None else now_price * count
        draft_total = None if draft_price is None else draft_price * count
        cells.append(
            WhatIfCell(
                mode=key[0],
                resolution=key[1],
                duration_s=key[2],
                audio=key[3],
                generations=count,
                current=now_total,
                draft=draft_total,
                difference=None if now_total is None or draft_total is None else draft_total - now_total,
            )
        )
        totals["generations"] += count
        for name, value in (("current", now_total), ("draft", draft_total)):
            if value is None:
                totals[f"unpriced_{name}"] += count
            else:
                totals[name] += value
    return WhatIfOut(
        since=since,
        until=until,
        current_version=current.version,
        draft_version=draft.version,
        cells=cells,
        total=WhatIfTotal(difference=totals["draft"] - totals["current"], **totals),
    )
