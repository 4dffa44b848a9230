"""Finance's endpoints: the feed, exports, balances at a moment, the roll-forward, periods, price what-if."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated, Literal, cast

from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter, QueryParameter
from litestar.response import File

import ledger
from entitlements.finance import exports, service
from entitlements.finance.exports import ExportRunner
from entitlements.finance.schemas import (
    AccountBalanceAt,
    ExportAccepted,
    ExportCreate,
    ExportOut,
    ExportsPage,
    FeedPage,
    PeriodClose,
    PeriodOut,
    PeriodsPage,
    Rollforward,
    UserBalanceAt,
    WhatIfCreate,
    WhatIfOut,
)
from entitlements.finance.seal_head import seal_head
from entitlements.http import (
    AppSettings,
    CursorQuery,
    LedgerService,
    PageLimit,
    Pool,
    PriceTable,
    TheCaller,
    UserIdPath,
)

Runner = NamedDependency[ExportRunner]
AtQuery = Annotated[
    datetime | None,
    QueryParameter(description="As of this instant (RFC 3339): what is dated before it counts. Default: now."),
]
PositionQuery = Annotated[
    str | None,
    QueryParameter(
        max_length=ledger.CURSOR_CHARS_MAX,
        description="As of this commit position (a feed `next` or an export's `commit_position`), instead of `at`.",
    ),
]
AfterQuery = Annotated[
    str | None,
    QueryParameter(max_length=ledger.CURSOR_CHARS_MAX, description="The `next` of the previous page."),
]
AccountCodePath = Annotated[
    str, PathParameter(min_length=1, max_length=100, description="A system account's code, e.g. system:sales.")
]
ExportIdPath = Annotated[str, PathParameter(min_length=1, max_length=100)]
SinceQuery = Annotated[datetime, QueryParameter(description="The period's first instant (inclusive), RFC 3339.")]
UntilQuery = Annotated[datetime, QueryParameter(description="The instant after the period (exclusive), RFC 3339.")]
FormatQuery = Annotated[
    Literal["json", "csv"], QueryParameter(name="format", description="json (default) or csv (item,moments).")
]
CSV = "text/csv; charset=utf-8"


class FinanceController(Controller):
    tags = ["finance"]

    @get(
        "/v1/ledger/feed",
        operation_id="getLedgerFeed",
        summary="Ledger transactions with their postings in commit order; never skips a late commit",
        opt={"roles": ("finance",)},
    )
    async def get_feed(
        self, ledger_service: LedgerService, pool: Pool, page_limit: PageLimit, after: AfterQuery = None
    ) -> FeedPage:
        # The primary, not a replica: the commit horizon is the primary's own.
        return await service.feed(ledger_service, pool, after=after, limit=page_limit)

    @post(
        "/v1/ledger/exports",
        operation_id="createExport",
        summary="Export transactions or postings (CSV or NDJSON) in commit order; 202, then poll its status",
        opt={"roles": ("finance",)},
        status_code=202,
    )
    async def create_export(
        self, pool: Pool, export_runner: Runner, caller: TheCaller, data: JSONBody[ExportCreate]
    ) -> ExportAccepted:
        return await exports.create_export(pool, export_runner, caller, data)

    @get("/v1/ledger/exports", operation_id="listExports", summary="Exports, newest first", opt={"roles": ("finance",)})
    async def list_exports(self, pool: Pool, page_limit: PageLimit, cursor: CursorQuery = None) -> ExportsPage:
        return await exports.list_exports(pool, limit=page_limit, cursor=cursor)

    @get(
        "/v1/ledger/exports/{export_id:str}",
        operation_id="getExport",
        summary="An export's status and, once done, its manifest",
        opt={"roles": ("finance",)},
    )
    async def get_export(self, pool: Pool, export_id: ExportIdPath) -> ExportOut:
        return await exports.get_export(pool, export_id)

    @get(
        "/v1/ledger/exports/{export_id:str}/file",
        operation_id="getExportFile",
        summary="The finished export's file, streamed (409 until it is done)",
        opt={"roles": ("finance",)},
        media_type=CSV,
    )
    async def get_export_file(self, pool: Pool, settings: AppSettings, export_id: ExportIdPath) -> File:
        path, export = await exports.export_file(pool, settings.finance, export_id)
        assert export.manifest is not None
        return File(
            path=path,
            media_type=exports.MEDIA_TYPES[export.format],
            filename=path.name,
            # RFC 3230's Digest carries the hash in base64; the manifest has it in hex, as sha256sum prints it.
            headers={"Digest": "sha-256=" + base64.b64encode(bytes.fromhex(export.manifest.sha256)).decode()},
        )

    @get(
        "/v1/users/{user_id:str}/balance",
        operation_id="getUserBalanceAt",
        summary="A user's available, held and owed moments as of an instant (or a commit position)",
        opt={"roles": ("support", "finance")},
    )
    async def get_user_balance(
        self, pool: Pool, read_pool: Pool, user_id: UserIdPath, at: AtQuery = None, position: PositionQuery = None
    ) -> UserBalanceAt:
        # A commit position is the primary's: a lagging replica's horizon may not have reached it yet.
        read = pool if position is not None else read_pool
        return await service.user_balance_at(read, user_id, at=at, position=position)

    @get(
        "/v1/ledger/accounts/{code:str}/balance",
        operation_id="getAccountBalance",
        summary="A system account's balance as of an instant (or a commit position)",
        opt={"roles": ("finance",)},
    )
    async def get_account_balance(
        self, pool: Pool, read_pool: Pool, code: AccountCodePath, at: AtQuery = None, position: PositionQuery = None
    ) -> AccountBalanceAt:
        read = pool if position is not None else read_pool  # as get_user_balance
        return await service.account_balance_at(read, code, at=at, position=position)

    @get(
        "/v1/ledger/rollforward",
        operation_id="getRollforward",
        summary="The moments liability rolled forward over [since, until), by kind of flow; `ties` when it adds up",
        opt={"roles": ("finance",)},
    )
    async def get_rollforward(
        self, pool: Pool, since: SinceQuery, until: UntilQuery, report_format: FormatQuery = "json"
    ) -> Response[Rollforward]:
        # The primary: `final` is its commit horizon, and the sums must be read in a snapshot that has it.
        report = await service.rollforward(pool, since=since, until=until)
        if report_format == "csv":
            # The same report as text (the document lists text/csv beside the JSON: EXTRA_RESPONSE_CONTENT).
            return cast("Response[Rollforward]", Response(service.rollforward_csv(report), media_type=CSV))
        return Response(report)

    @post(
        "/v1/ledger/periods",
        operation_id="closePeriod",
        summary="Close a month: its roll-forward frozen with the seal's head (409 if too early or already closed)",
        opt={"roles": ("finance",)},
        status_code=201,
    )
    async def close_period(self, pool: Pool, caller: TheCaller, data: JSONBody[PeriodClose]) -> PeriodOut:
        return await service.close_period(pool, caller, data.period, seal_head=seal_head)

    @get(
        "/v1/ledger/periods",
        operation_id="listPeriods",
        summary="Closed periods, newest first",
        opt={"roles": ("finance",)},
    )
    async def list_periods(self, read_pool: Pool, page_limit: PageLimit, cursor: CursorQuery = None) -> PeriodsPage:
        return await service.list_periods(read_pool, limit=page_limit, cursor=cursor)

    @post(
        "/v1/pricing/what-if",
        operation_id="priceWhatIf",
        summary="A window's delivered generations priced under the current and a draft table (never published)",
        opt={"roles": ("finance",)},
        status_code=200,
    )
    async def what_if(self, read_pool: Pool, price_table: PriceTable, data: JSONBody[WhatIfCreate]) -> WhatIfOut:
        return await service.what_if(read_pool, price_table, data)
