"""Finance's bodies: the feed, exports and their manifests, balances at a moment, the roll-forward, closed
periods and the price what-if."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

import ledger
from entitlements.schemas import Struct

Dataset = Literal["transactions", "postings"]
ExportFormat = Literal["csv", "ndjson"]
ExportStatus = Literal["pending", "running", "done", "failed"]
# A period is a calendar month in UTC, of the years 2000-9998 (the month after 9998-12 still has a date).
PERIOD_PATTERN = r"^(2[0-9]{3}|[3-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-(0[1-9]|1[0-2])$"
# A draft price table is TOML text; the request body's own limit (REQUEST_BODY_BYTES_MAX) bounds it too.
PRICE_TABLE_CHARS_MAX = 60_000
Position = Annotated[str, msgspec.Meta(min_length=1, max_length=ledger.CURSOR_CHARS_MAX)]


class FeedPage(Struct, frozen=True):
    items: list[ledger.TransactionItem]
    # Where to continue from: the last item's commit position, or `after` again when nothing new committed.
    next: str


class ExportCreate(Struct, frozen=True):
    dataset: Dataset
    format: ExportFormat
    # The commit position to continue after (a `commit_position` or `through` of an earlier export).
    after: Position | None = None
    # Only transactions dated at or after `since` and before `until` (RFC 3339).
    since: datetime | None = None
    until: datetime | None = None


class ExportAccepted(Struct, frozen=True):
    id: str
    status: ExportStatus


class Manifest(Struct, frozen=True):
    format_version: int
    dataset: Dataset
    format: ExportFormat
    columns: list[str]
    # The commit-order range: after this position (null: from the start) through this one (null: empty).
    after: str | None
    through: str | None
    since: datetime | None
    until: datetime | None
    rows: int
    bytes: int
    sha256: str
    # The seal's chain head when the export was taken (null until the ledger is sealed).
    seal_head: str | None


class ExportOut(Struct, frozen=True):
    id: str
    status: ExportStatus
    dataset: Dataset
    format: ExportFormat
    after: str | None
    since: datetime | None
    until: datetime | None
    requested_by: str
    created_at: datetime
    finished_at: datetime | None
    error: str | None
    manifest: Manifest | None


class ExportsPage(Struct, frozen=True):
    items: list[ExportOut]
    next_cursor: str | None


class UserBalanceAt(Struct, frozen=True):
    user_id: str
    # The instant asked for (everything dated before it counts), or null when asked by commit position.
    at: datetime | None
    position: str | None
    available: int
    held: int
    owed: int


class AccountBalanceAt(Struct, frozen=True):
    account: str
    at: datetime | None
    position: str | None
    # The sum of the account's postings: a system account that gives moments out goes negative.
    balance: int


class Liability(Struct, frozen=True):
    """What users hold at one instant: available + held - owed."""

    available: int
    held: int
    owed: int
    liability: int


class Flows(Struct, frozen=True):
    # Into the liability.
    sold: int
    subscription_grants: int
    promotions: int
    refunds_to_users: int
    clawback_reversals: int
    # Out of it.
    revenue: int
    breakage: int
    clawbacks: int


class Debt(Struct, frozen=True):
    opening: int
    created: int
    repaid: int
    closing: int


class AccountMovement(Struct, frozen=True):
    account: str
    opening: int
    debits: int
    credits: int
    closing: int


class Identity(Struct, frozen=True):
    name: str
    holds: bool
    left: int
    right: int
    detail: str


class Rollforward(Struct, frozen=True):
    since: datetime
    until: datetime
    opening: Liability
    inflows: int
    outflows: int
    flows: Flows
    debt: Debt
    closing: Liability
    system_accounts: list[AccountMovement]
    identities: list[Identity]
    ties: bool
    # The names of the identities that do not hold (empty when `ties`).
    failing: list[str]
    # Whether the commit horizon has passed `until`: no transaction still running could add to it.
    final: bool


class PeriodClose(Struct, frozen=True):
    period: Annotated[str, msgspec.Meta(pattern=PERIOD_PATTERN)]


class PeriodOut(Struct, frozen=True):
    period: str
    since: datetime
    until: datetime
    closed_at: datetime
    closed_by: str
    seal_head: str | None
    report: Rollforward


class PeriodsPage(Struct, frozen=True):
    items: list[PeriodOut]
    next_cursor: str | None


class WhatIfCreate(Struct, frozen=True):
    table: Annotated[str, msgspec.Meta(min_length=1, max_length=PRICE_TABLE_CHARS_MAX)]
    since: datetime
    until: datetime


class WhatIfCell(Struct, frozen=True):
    mode: str
    resolution: str
    duration_s: int
    audio: bool
    generations: int
    # Null where the table has no such cell (a grid that has changed since).
    current: int | None
    draft: int | None
    difference: int | None


class WhatIfTotal(Struct, frozen=True):
    generations: int
    current: int
    draft: int
    difference: int
    # Generations a table could not price (left out of its total).
    unpriced_current: int
    unpriced_draft: int


class WhatIfOut(Struct, frozen=True):
    since: datetime
    until: datetime
    current_version: str
    draft_version: str
    cells: list[WhatIfCell]
    total: WhatIfTotal
