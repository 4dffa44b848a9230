"""Exports of the ledger: transactions or postings, CSV or NDJSON, in commit order, from one snapshot.

PostgreSQL writes the rows itself (`COPY (…) TO STDOUT`), streamed to the file chunk by chunk while the
SHA-256 is taken over the same bytes: nothing holds more than one chunk, whatever the ledger's size. The
rows are those committed after the request's `after` position and below the snapshot's horizon (the
feed's cursor, ledger/feed.py), so an export continued from an earlier one's `through` misses no late
commit and repeats no row. The manifest records the range, the row count, the body's SHA-256 and the
seal's head in the same snapshot.

An export is run by a background task of the API process that accepted it (`ExportRunner`), not on
demand: the manifest (and so the SHA-256) must be known before the file is handed out, and a large export
outlives an HTTP request. Any process may pick up an export whose process died, once its lease runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import msgspec
import structlog

import ledger
from entitlements.errors import Conflict, NotFound, ValidationFailed
from entitlements.finance import queries
from entitlements.finance.schemas import (
    Dataset,
    ExportAccepted,
    ExportCreate,
    ExportFormat,
    ExportOut,
    ExportsPage,
    Manifest,
)
from entitlements.finance.seal_head import seal_head as current_seal_head
from entitlements.keys import Caller
from entitlements.schemas import aware
from entitlements.settings import FinanceSettings

FORMAT_VERSION = 1
MEDIA_TYPES: dict[str, str] = {"csv": "text/csv; charset=utf-8", "ndjson": "application/x-ndjson"}
EXPORTS_CURSOR = "e1"
# COPY's CSV with quote and delimiter characters that PostgreSQL's JSON text never holds unescaped: each
# JSON text is one unquoted field, so NDJSON comes out of COPY byte for byte as json_build_object wrote it.
_NDJSON_COPY = {"format": "csv", "quote": "\x01", "delimiter": "\x02"}
_NOT_BEFORE = datetime(1, 1, 1, tzinfo=UTC)
log = structlog.get_logger("moments.finance.exports")
Output = Callable[[bytes], Awaitable[None]]
SealHead = Callable[[ledger.Connection], Awaitable[str | None]]


class ExportRequest(msgspec.Struct, frozen=True, kw_only=True):
    dataset: Dataset
    format: ExportFormat
    after: ledger.CommitPosition = ledger.START
    since: datetime | None = None
    until: datetime | None = None


def request_of(body: ExportCreate) -> ExportRequest:
    """The request checked: a position this service issued, a window that is one."""
    try:
        after = ledger.decode_position(body.after)
    except ledger.InvalidCursor:
        raise ValidationFailed("after", "is not a commit position this service issued") from None
    since, until = aware(body.since, "since"), aware(body.until, "until")
    if since is not None and until is not None and since > until:
        raise ValidationFailed("until", "must not be before since")
    return ExportRequest(dataset=body.dataset, format=body.format, after=after, since=since, until=until)


async def write_export(
    connection: ledger.Connection,
    request: ExportRequest,
    output: Output,
    *,
    statement_timeout_ms: int,
    seal_head: SealHead = current_seal_head,
) -> Manifest:
    """Streams the export's body to `output` from one REPEATABLE READ snapshot; answers its manifest."""
    digest = hashlib.sha256()
    size = 0

    async def hashed(chunk: bytes) -> None:
        nonlocal size
        digest.update(chunk)
        size += len(chunk)
        await output(chunk)

    bounds = (
        str(request.after.xid),
        request.after.transaction_id,
        request.since or _NOT_BEFORE,
        request.until or datetime.max.replace(tzinfo=UTC),
    )
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        # A large export outlives the API's per-statement limit; it gets its own.
        await connection.execute(f"SET LOCAL statement_timeout = {int(statement_timeout_ms)}")
        last = await connection.fetchrow(queries.LAST_EXPORTED, *bounds)
        head = await seal_head(connection)
        options = {"format": "csv", "header": True} if request.format == "csv" else _NDJSON_COPY
        status = await connection.copy_from_query(
            queries.export_rows(request.dataset, request.format), *bounds, output=hashed, **options
        )
    rows = int(status.split()[-1])
    through = ledger.CommitPosition(xid=int(last["xid"]), transaction_id=last["id"]) if last is not None else None
    return Manifest(
        format_version=FORMAT_VERSION,
        dataset=request.dataset,
        format=request.format,
        columns=queries.columns(request.dataset, request.format),
        after=ledger.encode_position(request.after) if request.after != ledger.START else None,
        through=ledger.encode_position(through) if through is not None else None,
        since=request.since,
        until=request.until,
        rows=rows,
        bytes=size,
        sha256=digest.hexdigest(),
        seal_head=head,
    )


async def export_to_file(
    connection: ledger.Connection, request: ExportRequest, path: Path, *, statement_timeout_ms: int
) -> Manifest:
    """The export written to `path`, whole or not at all (written beside it, then renamed)."""
    partial = path.with_name(path.name + ".part")
    path.parent.mkdir(parents=True, exist_ok=True)
    with partial.open("wb") as file:

        async def write(chunk: bytes) -> None:
            file.write(chunk)

        try:
            manifest = await write_export(connection, request, write, statement_timeout_ms=statement_timeout_ms)
            file.flush()
            os.fsync(file.fileno())
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    partial.replace(path)
    return manifest


def file_path(settings: FinanceSettings, export_id: uuid.UUID | str, file_format: str) -> Path:
    return settings.export_dir / f"{export_id}.{file_format}"


def _export_out(row: asyncpg.Record) -> ExportOut:
    return ExportOut(
        id=str(row["id"]),
        status=row["status"],
        dataset=row["dataset"],
        format=row["format"],
        after=row["after_position"],
        since=row["since"],
        until=row["until"],
        requested_by=row["requested_by"],
        created_at=row["created_at"],
        finished_at=row["finished_at"],
        error=row["error"],
        manifest=msgspec.json.decode(row["manifest"], type=Manifest) if row["manifest"] is not None else None,
    )


class ExportRunner:
    """Runs accepted exports in the background of this process, one at a time, and picks up those whose
    process died (their lease ran out) every `export_poll_interval_s`."""

    def __init__(self, pool: asyncpg.Pool, settings: FinanceSettings) -> None:
        self._pool = pool
        self._settings = settings
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="exports")

    def kick(self) -> None:
        self._wake.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                while await self.run_one():
                    pass
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                log.warning("export_runner_failed", error=repr(error))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._settings.export_poll_interval_s)
            self._wake.clear()

    async def run_one(self) -> bool:
        """Claims and runs one export; False when none was waiting."""
        row = await self._pool.fetchrow(queries.CLAIM_EXPORT, float(self._settings.export_lease_s))
        if row is None:
            return False
        request = ExportRequest(
            dataset=row["dataset"],
            format=row["format"],
            after=ledger.decode_position(row["after_position"]),
            since=row["since"],
            until=row["until"],
        )
        path = file_path(self._settings, row["id"], row["format"])
        try:
            async with self._pool.acquire() as connection:
                manifest = await export_to_file(
                    connection, request, path, statement_timeout_ms=self._settings.export_statement_timeout_s * 1000
                )
        except (OSError, asyncpg.PostgresError) as error:
            log.warning("export_failed", export_id=str(row["id"]), error=repr(error))
            await self._pool.execute(queries.FAIL_EXPORT, row["id"], f"{type(error).__name__}: {error}")
            return True
        await self._pool.execute(queries.FINISH_EXPORT, row["id"], msgspec.json.encode(manifest).decode())
        log.info("export_done", export_id=str(row["id"]), rows=manifest.rows, sha256=manifest.sha256)
        return True


async def create_export(pool: asyncpg.Pool, runner: ExportRunner, caller: Caller, body: ExportCreate) -> ExportAccepted:
    request = request_of(body)
    row = await pool.fetchrow(
        queries.INSERT_EXPORT,
        uuid.uuid4(),
        request.dataset,
        request.format,
        body.after,
        request.since,
        request.until,
        caller.actor,
    )
    assert row is not None
    runner.kick()
    return ExportAccepted(id=str(row["id"]), status=row["status"])


def _export_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise NotFound(f"no export {text!r}") from None


async def get_export(pool: asyncpg.Pool, export_id: str) -> ExportOut:
    row = await pool.fetchrow(queries.GET_EXPORT, _export_id(export_id))
    if row is None:
        raise NotFound(f"no export {export_id!r}")
    return _export_out(row)


async def export_file(pool: asyncpg.Pool, settings: FinanceSettings, export_id: str) -> tuple[Path, ExportOut]:
    """The finished export's file; 409 conflict while it is still being written (or failed)."""
    export = await get_export(pool, export_id)
    if export.status != "done":
        raise Conflict(f"export {export_id} is {export.status}; its file exists once it is done")
    path = file_path(settings, export.id, export.format)
    if not path.is_file():
        raise NotFound(f"the file of export {export_id} is not in EXPORT_DIR on this host")
    return path, export


async def list_exports(pool: asyncpg.Pool, *, limit: int, cursor: str | None) -> ExportsPage:
    created_before, id_before = None, None
    if cursor is not None:
        try:
            created_text, id_text = ledger.decode_cursor(cursor, EXPORTS_CURSOR, 2)
            created_before, id_before = datetime.fromisoformat(created_text), uuid.UUID(id_text)
        except (ledger.InvalidCursor, ValueError):
            raise ValidationFailed("cursor", "is not a cursor this service issued") from None
    rows = await pool.fetch(queries.LIST_EXPORTS, created_before, id_before, limit + 1)
    items = [_export_out(row) for row in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        next_cursor = ledger.encode_cursor(EXPORTS_CURSOR, items[-1].created_at.isoformat(), items[-1].id)
    return ExportsPage(items=items, next_cursor=next_cursor)
