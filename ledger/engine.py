"""Executes ledger operations inside a database transaction the caller owns.

One call takes any number of operations (a batch from the group committer, or one operation inside a
generation's transaction): it locks the users' balance rows in sorted order, loads their lots and the
holds named, applies the pure rules in memory in the given order, and writes everything with one
set-based statement per table. Each operation gets its own result or error; a refused operation writes
nothing. Only this module writes balances.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeAlias

import asyncpg
import msgspec
from asyncpg.pool import PoolConnectionProxy

from ledger import arrays, rules
from ledger.operations import (
    AnyOperation,
    Capture,
    Clawback,
    ClawbackUnspent,
    Credit,
    ExpireLots,
    Hold,
    HoldNotFound,
    IdempotencyConflict,
    Refund,
    Result,
    Void,
    validate,
)
from ledger.rules import LedgerRuleError

Outcome = Result | LedgerRuleError
# A plain connection or one borrowed from a pool: the ledger works with either.
Connection: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"

CREDIT_SOURCE = {
    "purchase": rules.SALES,
    "subscription_grant": rules.SUBSCRIPTION_GRANTS,
    "grant": rules.PROMOTIONS,
    "clawback_reversal": rules.CLAWBACK,
}
AUTO_EXPIRY_ACTOR = "system:expiry"

# A batch reaches a few hundred rows by key and their pages are cached, so its plans must probe indexes.
# Priced at the default random_page_cost, index probes lose to sequential scans; and statistics taken
# while a table was small (the holds table is empty until the first hold) make a sequential scan, or one
# scan kept in memory and joined row by row, look free. Either way the generic plan asyncpg caches (per
# connection, whichever transaction planned it first) then reads a whole table per batch as the ledger
# grows. SET LOCAL: they end with the transaction.
PLAN_SETTINGS = (
    "SET LOCAL random_page_cost = 1.1; SET LOCAL enable_seqscan = off; SET LOCAL enable_material = off;"
    " SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off"
)
# A setting's name as SET LOCAL takes it unquoted: a PostgreSQL parameter, or a custom one (`moments.x`).
_SETTING_NAME = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?$")


def transaction_settings_sql(settings: Mapping[str, str]) -> str:
    """PLAN_SETTINGS and `settings` as one string of SET LOCAL commands, sent with the statement that
    already opens each ledger transaction (no round trip of their own). SET LOCAL, not settings of the
    session: behind a transaction-mode pooler (PgBouncer) the next transaction may run on another server
    connection, and what a trigger reads (the webhook threshold) must be there whichever it is."""
    parts = [PLAN_SETTINGS]
    for name, value in settings.items():
        if not _SETTING_NAME.match(name):
            raise ValueError(f"not a setting's name: {name!r}")
        quoted = value.replace("'", "''")
        parts.append(f"SET LOCAL {name} = '{quoted}'")
    return "; ".join(parts)


# Batches of at least this many operations are written in two statements, the first with this share.
SPLIT_OPERATIONS_MIN = 64
FIRST_PART_SHARE = 0.4
_result_decoder = msgspec.json.Decoder(Result)
_result_encoder = msgspec.json.Encoder()


@dataclass(slots=True)
class _User:
    state: rules.UserState
    account_ids: dict[str, int]
    expiry_checked: bool = False
    touched: bool = False


@dataclass(slots=True)
class _HoldRecord:
    hold: rules.Hold
    reference: str | None
    hold_transaction_id: int | None
    settle_transaction_id: int | None = None
    settled_at: datetime | None = None


class IdPool:
    """Ids preallocated from a sequence in one round trip; unused ones are simply skipped (gaps are fine)."""

    def __init__(self, ids: Sequence[int]) -> None:
        self._ids: Iterator[int] = iter(ids)

    def take(self) -> int:
        return next(self._ids)


class Engine:
    """Per-database state that never changes once read: the system accounts' ids; and what every ledger
    transaction is SET LOCAL with (PLAN_SETTINGS and the caller's `transaction_settings`)."""

    def __init__(self, transaction_settings: Mapping[str, str] | None = None) -> None:
        self._system_account_ids: dict[str, int] | None = None
        self.settings_sql = transaction_settings_sql(transaction_settings or {})

    async def system_account_ids(self, connection: Connection) -> dict[str, int]:
        if self._system_account_ids is None:
            rows = await connection.fetch("SELECT code, id FROM ledger_accounts WHERE kind = 'system'")
            found = {row["code"]: row["id"] for row in rows}
            missing = set(rules.SYSTEM_ACCOUNTS) - set(found)
            assert not missing, f"system accounts missing from the database: {missing}"
            self._system_account_ids = found
        return self._system_account_ids

    async def execute(
        self,
        connection: Connection,
        operations: Sequence[AnyOperation],
        *,
        now: datetime | None = None,
        planned: bool = False,
    ) -> list[Outcome]:
        """Applies `operations` in order inside the caller's open transaction. `planned`: the transaction
        already runs with `settings_sql` (the batcher sends them with its BEGIN)."""
        assert connection.is_in_transaction(), "the ledger writes only inside a transaction"
        if not planned:
            # For the rest of the caller's transaction too: a plan cached now is reused by later batches.
            await connection.execute(self.settings_sql)
        now = now or datetime.now(UTC)
        outcomes: list[Outcome | None] = [None] * len(operations)
        valid: list[int] = []
        for index, operation in enumerate(operations):
            try:
                validate(operation)
            except LedgerRuleError as invalid:
                outcomes[index] = invalid
            else:
                valid.append(index)
        if valid:
            await self._execute_valid(connection, operations, valid, outcomes, now)
        assert all(outcome is not None for outcome in outcomes)
        return [outcome for outcome in outcomes if outcome is not None]

    async def _execute_valid(
        self,
        connection: Connection,
        operations: Sequence[AnyOperation],
        valid: list[int],
        outcomes: list[Outcome | None],
        now: datetime,
    ) -> None:
        system_ids = await self.system_account_ids(connection)
        user_ids = sorted({operations[index].user_id for index in valid})
        users = await _lock_users(connection, user_ids)
        hold_ids = sorted(
            {op.hold_id for index in valid if isinstance(op := operations[index], Capture | Void | Refund)}
        )
        # A refund may give back to one new lot per share of its hold: lot ids for that many.
        refunded_hold_ids = [op.hold_id for index in valid if isinstance(op := operations[index], Refund)]
        read = await connection.fetchrow(
            _READ_LOCKED,
            arrays.texts([operations[index].key for index in valid]),
            arrays.bigints(hold_ids),
            arrays.texts(user_ids),
            arrays.bigints(refunded_hold_ids),
            len(valid) + len(user_ids),
            sum(1 for index in valid if isinstance(operations[index], Credit)),
            sum(1 for index in valid if isinstance(operations[index], Hold)),
        )
        assert read is not None
        stored = {key: (bytes(request_hash), result) for key, request_hash, result in read["stored"]}
        holds = _holds_from([read[column] for column in _HOLD_COLUMNS])
        _add_lots(users, read["lots"])
        run = _Run(
            now=now,
            users=users,
            holds=holds,
            system_ids=system_ids,
            transaction_ids=IdPool(read["transaction_ids"]),
            lot_ids=IdPool(read["lot_ids"]),
            hold_ids=IdPool(read["hold_ids"]),
        )
        # Keys this batch has written, as the database would have them: a refusal writes nothing and so
        # claims nothing, whether or not the retry shares its batch.
        written_in_batch: dict[str, tuple[bytes, Result]] = {}
        # A large batch is applied and written in two parts: the first part's statement runs in PostgreSQL
        # while Python applies the rules of the second.
        split = int(len(valid) * FIRST_PART_SHARE) if len(valid) >= SPLIT_OPERATIONS_MIN else len(valid)
        writing: asyncio.Task[None] | None = None
        try:
            for part, last in ((valid[:split], False), (valid[split:], True)):
                for index in part:
                    outcomes[index] = _outcome_of(run, operations[index], stored, written_in_batch)
                statement = run.statement(final=last)
                if writing is not None:
                    await writing
                    writing = None
                if statement is None:
                    continue
                if last:
                    await statement.execute(connection)
                else:
                    writing = asyncio.create_task(statement.execute(connection))
                    await asyncio.sleep(0)  # sends it
        finally:
            if writing is not None:
                writing.cancel()
                with contextlib.suppress(BaseException):
                    await writing


def _outcome_of(
    run: _Run,
    operation: AnyOperation,
    stored: dict[str, tuple[bytes, str]],
    written_in_batch: dict[str, tuple[bytes, Result]],
) -> Outcome:
    """One operation's outcome: a replay of what its key holds, or the rules applied (recording what a
    written key now holds)."""
    request_hash = operation.request_hash()
    found = stored.get(operation.key)
    if found is not None:
        return _replay_or_conflict(operation.key, *found, request_hash)
    earlier = written_in_batch.get(operation.key)
    if earlier is not None:
        earlier_hash, earlier_result = earlier
        if earlier_hash != request_hash:
            return IdempotencyConflict(operation.key)
        return msgspec.structs.replace(earlier_result, replayed=True)
    try:
        outcome = run.apply(operation, request_hash)
    except LedgerRuleError as refused:
        return refused
    if outcome.transaction_id is not None:
        written_in_batch[operation.key] = (request_hash, outcome)
    return outcome


def _replay_or_conflict(key: str, stored_hash: bytes, stored_result: str, request_hash: bytes) -> Outcome:
    if stored_hash != request_hash:
        return IdempotencyConflict(key)
    return msgspec.structs.replace(_result_decoder.decode(stored_result), replayed=True)


@dataclass(slots=True)
class _Run:
    """The in-memory work of one execute(): applies rules and remembers what to write."""

    now: datetime
    users: dict[str, _User]
    holds: dict[int, _HoldRecord]
    system_ids: dict[str, int]
    transaction_ids: IdPool
    lot_ids: IdPool
    hold_ids: IdPool
    transactions: list[tuple[Any, ...]] = field(default_factory=list)
    postings: list[tuple[int, int, int]] = field(default_factory=list)
    lot_sources: dict[int, int] = field(default_factory=dict)

    def apply(self, operation: AnyOperation, request_hash: bytes) -> Result:
        user = self.users[operation.user_id]
        if not isinstance(operation, ExpireLots):
            self._expire_on_touch(user)
        state = user.state
        hold_id: int | None = None
        lot_ids: tuple[int, ...] = ()
        reverses: int | None = None
        kind: str
        match operation:
            case Credit():
                lot_id = self.lot_ids.take()
                postings, lot = rules.credit(
                    state,
                    amount=operation.amount,
                    source=CREDIT_SOURCE[operation.kind],
                    category=operation.category,
                    expires_at=operation.expires_at,
                    lot_id=lot_id,
                    now=self.now,
                )
                kind, amount = operation.kind, operation.amount
                lot_ids = (lot.id,) if lot is not None else ()
            case Hold():
                new_id = self.hold_ids.take()
                postings, hold = rules.hold(
                    state,
                    amount=operation.amount,
                    hold_id=new_id,
                    expires_at=operation.expires_at,
                    now=self.now,
                    open_holds_max=operation.open_holds_max,
                )
                self.holds[new_id] = _HoldRecord(hold=hold, reference=operation.reference, hold_transaction_id=None)
                kind, amount, hold_id = "hold", operation.amount, new_id
            case Capture():
                record = self._hold_of(operation.hold_id, operation.user_id)
                postings = rules.capture(state, record.hold, amount=operation.amount, now=self.now)
                kind, amount, hold_id = "capture", record.hold.captured, record.hold.id
            case Void():
                record = self._hold_of(operation.hold_id, operation.user_id)
                postings = rules.void(state, record.hold, expired=operation.expired, now=self.now)
                kind, amount, hold_id = "void", record.hold.amount, record.hold.id
            case Refund():
                record = self._hold_of(operation.hold_id, operation.user_id)
                postings, new_lots = rules.refund(
                    state, record.hold, amount=operation.amount, new_lot_id=self.lot_ids.take, now=self.now
                )
                kind, amount, hold_id = "refund", operation.amount, record.hold.id
                lot_ids = tuple(lot.id for lot in new_lots)
                reverses = record.settle_transaction_id
            case ExpireLots():
                expired = rules.expire_lots(state, now=self.now)
                if expired is None:
                    # Nothing to expire: no transaction, nothing to replay; answering again is harmless.
                    return self._result(None, "expiry", 0, user, None, ())
                postings, kind, amount = expired, "expiry", -expired[0][1]
            case Clawback():
                postings = rules.clawback(
                    state, amount=operation.amount, preferred_lot_id=operation.lot_id, now=self.now
                )
                kind, amount = "clawback", operation.amount
            case ClawbackUnspent():
                taken = rules.clawback_unspent(
                    state,
                    lot_id=operation.lot_id,
                    numerator=operation.numerator,
                    denominator=operation.denominator,
                    now=self.now,
                )
                if taken is None:
                    # Nothing left to take: no transaction, nothing to replay; asking again is harmless.
                    return self._result(None, "clawback", 0, user, None, ())
                postings, kind, amount = taken, "clawback", -taken[0][1]
            case _:
                raise AssertionError(f"unknown operation {operation!r}")
        state.check()
        transaction_id = self.transaction_ids.take()
        result = self._result(transaction_id, kind, amount, user, hold_id, lot_ids)
        self._record(
            transaction_id,
            kind,
            operation.key,
            request_hash,
            operation,
            user,
            postings,
            result,
            reverses=reverses,
        )
        if hold_id is not None:
            record = self.holds[hold_id]
            if kind == "hold":
                record.hold_transaction_id = transaction_id
            elif kind in {"capture", "void"}:
                record.settle_transaction_id, record.settled_at = transaction_id, self.now
        for lot_id in lot_ids:
            self.lot_sources[lot_id] = transaction_id
        return result

    def _hold_of(self, hold_id: int, user_id: str) -> _HoldRecord:
        record = self.holds.get(hold_id)
        if record is None or record.hold.user_id != user_id:
            raise HoldNotFound(hold_id)
        return record

    def _expire_on_touch(self, user: _User) -> None:
        """Lots past their expiry are expired before the user's next operation, so nothing spends them."""
        if user.expiry_checked:
            return
        user.expiry_checked = True
        expiring = sorted(lot.id for lot in user.state.lots.values() if lot.remaining > 0 and lot.is_expired(self.now))
        if not expiring:
            return
        postings = rules.expire_lots(user.state, now=self.now)
        assert postings is not None
        digest = hashlib.sha256(",".join(map(str, expiring)).encode()).hexdigest()[:40]
        key = f"expiry:{user.state.user_id}:{digest}"
        transaction_id = self.transaction_ids.take()
        result = self._result(transaction_id, "expiry", postings[1][1], user, None, ())
        operation = ExpireLots(
            key=key, user_id=user.state.user_id, actor=AUTO_EXPIRY_ACTOR, reason="lots past their expiry"
        )
        self._record(
            transaction_id,
            "expiry",
            key,
            operation.request_hash(),
            operation,
            user,
            postings,
            result,
            reverses=None,
        )

    def _result(
        self,
        transaction_id: int | None,
        kind: str,
        amount: int,
        user: _User,
        hold_id: int | None,
        lot_ids: tuple[int, ...],
    ) -> Result:
        state = user.state
        return Result(
            transaction_id=transaction_id,
            kind=kind,
            user_id=state.user_id,
            amount=amount,
            available=state.available,
            held=state.held,
            owed=state.owed,
            hold_id=hold_id,
            lot_ids=lot_ids,
        )

    def _record(
        self,
        transaction_id: int,
        kind: str,
        key: str,
        request_hash: bytes,
        operation: AnyOperation,
        user: _User,
        postings: rules.Postings,
        result: Result,
        *,
        reverses: int | None,
    ) -> None:
        user.touched = True
        self.transactions.append(
            (
                transaction_id,
                kind,
                key,
                request_hash,
                user.state.user_id,
                operation.reference,
                reverses,
                operation.actor,
                operation.reason,
                _result_encoder.encode(result).decode(),
            )
        )
        for account, amount in postings:
            account_id = user.account_ids.get(account) or self.system_ids[account]
            self.postings.append((transaction_id, account_id, amount))

    def statement(self, *, final: bool) -> _Statement | None:
        """What was applied since the last statement, as one statement (None: nothing to write). Only the
        final one writes the balances, which do not change what the others wrote."""
        # One statement, one round trip: each write is a data-modifying WITH clause. The tables' statement
        # triggers fire once the whole statement is done, so each check sees every row the batch wrote.
        statement = _Statement()
        if self.transactions:
            self._add_rows(statement)
        if final:
            self._add_balances(statement)
        return statement if statement.parts else None

    def _add_rows(self, statement: _Statement) -> None:
        """The ledger transactions, postings, lots and holds applied since the last statement."""
        written = statement.add(
            """
            INSERT INTO ledger_transactions
                (id, kind, idempotency_key, request_hash, user_id, reference, reverses_transaction_id,
                 actor, reason, result)
            SELECT * FROM unnest($1::text::bigint[], $2::text::text[], $3::text::text[], $4::text::bytea[],
                                 $5::text::text[], $6::text::text[], $7::text::bigint[], $8::text::text[],
                                 $9::text::text[], $10::text::json[])
            RETURNING id, idempotency_key, created_at
            """,
            *_encoded(self.transactions, _TRANSACTION_COLUMNS),
        )
        # The keys' uniqueness across months (migrations/0014_ledger_partitions.sql), in key order: two
        # batches sharing keys wait for each other's in the same order instead of deadlocking.
        statement.add(
            f"""
            INSERT INTO ledger_idempotency_keys (idempotency_key, transaction_id, created_at)
            SELECT idempotency_key, id, created_at FROM {written} ORDER BY idempotency_key
            """
        )
        new_lots, changed_lots = [], []
        for user in self.users.values():
            for lot in user.state.lots.values():
                if lot.new:
                    new_lots.append(
                        (
                            lot.id,
                            user.state.user_id,
                            lot.category,
                            lot.amount,
                            lot.remaining,
                            lot.expires_at,
                            lot.expired_at,
                            self.lot_sources[lot.id],
                        )
                    )
                elif lot.changed:
                    changed_lots.append((lot.id, lot.remaining, lot.expired_at))
        if new_lots:
            statement.add(
                """
                INSERT INTO ledger_lots
                    (id, user_id, category, amount, remaining, expires_at, expired_at, source_transaction_id)
                SELECT * FROM unnest($1::text::bigint[], $2::text::text[], $3::text::text[], $4::text::bigint[],
                                     $5::text::bigint[], $6::timestamptz[], $7::timestamptz[], $8::text::bigint[])
                """,
                *_encoded(new_lots, _NEW_LOT_COLUMNS),
            )
        new_holds, changed_holds = [], []
        for record in self.holds.values():
            hold = record.hold
            if hold.new:
                new_holds.append(
                    (
                        hold.id,
                        hold.user_id,
                        hold.amount,
                        hold.status,
                        hold.captured,
                        hold.refunded,
                        hold.expires_at,
                        record.reference,
                        record.hold_transaction_id,
                        record.settle_transaction_id,
                        record.settled_at,
                        *_share_arrays(hold.shares),
                    )
                )
            elif hold.changed:
                changed_holds.append(
                    (
                        hold.id,
                        hold.status,
                        hold.captured,
                        hold.refunded,
                        record.settle_transaction_id,
                        record.settled_at,
                        *_share_arrays(hold.shares)[2:],
                    )
                )
        if new_holds:
            statement.add(
                """
                INSERT INTO ledger_holds
                    (id, user_id, amount, status, captured, refunded, expires_at, reference,
                     hold_transaction_id, settle_transaction_id, settled_at,
                     share_lot_ids, share_drawn, share_returned, share_refunded)
                SELECT id, user_id, amount, status, captured, refunded, expires_at, reference,
                       hold_transaction_id, settle_transaction_id, settled_at,
                       lot_ids::bigint[], drawn::bigint[], returned::bigint[], refunded_shares::bigint[]
                FROM unnest($1::text::bigint[], $2::text::text[], $3::text::bigint[], $4::text::text[],
                            $5::text::bigint[], $6::text::bigint[], $7::timestamptz[], $8::text::text[],
                            $9::text::bigint[], $10::text::bigint[], $11::timestamptz[], $12::text::text[],
                            $13::text::text[], $14::text::text[], $15::text::text[])
                    AS new (id, user_id, amount, status, captured, refunded, expires_at, reference,
                            hold_transaction_id, settle_transaction_id, settled_at,
                            lot_ids, drawn, returned, refunded_shares)
                """,
                *_encoded(new_holds, _NEW_HOLD_COLUMNS),
            )
        statement.add(
            """
            INSERT INTO ledger_postings (transaction_id, account_id, amount)
            SELECT * FROM unnest($1::text::bigint[], $2::text::bigint[], $3::text::bigint[])
            """,
            *_encoded(self.postings, (arrays.bigints,) * 3),
        )
        if changed_lots:
            statement.add(
                """
                UPDATE ledger_lots AS lot SET remaining = change.remaining, expired_at = change.expired_at
                FROM unnest($1::text::bigint[], $2::text::bigint[], $3::timestamptz[])
                    AS change (id, remaining, expired_at)
                WHERE lot.id = change.id
                """,
                *_encoded(changed_lots, (arrays.bigints, arrays.bigints, list)),
            )
        if changed_holds:
            statement.add(
                """
                UPDATE ledger_holds AS hold
                SET status = change.status, captured = change.captured, refunded = change.refunded,
                    settle_transaction_id = change.settle_transaction_id, settled_at = change.settled_at,
                    share_returned = change.returned::bigint[], share_refunded = change.refunded_shares::bigint[]
                FROM unnest($1::text::bigint[], $2::text::text[], $3::text::bigint[], $4::text::bigint[],
                            $5::text::bigint[], $6::timestamptz[], $7::text::text[], $8::text::text[])
                    AS change (id, status, captured, refunded, settle_transaction_id, settled_at, returned,
                               refunded_shares)
                WHERE hold.id = change.id
                """,
                *_encoded(changed_holds, _CHANGED_HOLD_COLUMNS),
            )
        # Written: what the next statement writes is only what changes after this.
        self.transactions, self.postings = [], []
        for user in self.users.values():
            for lot in user.state.lots.values():
                lot.new = lot.changed = False
        for record in self.holds.values():
            record.hold.new = record.hold.changed = False

    def _add_balances(self, statement: _Statement) -> None:
        touched = [
            (user.state.user_id, user.state.available, user.state.held, user.state.owed, user.state.open_holds)
            for user in self.users.values()
            if user.touched
        ]
        if not touched:
            return
        statement.add(
            """
            UPDATE ledger_balances AS balance
            SET available = change.available, held = change.held, owed = change.owed,
                open_holds = change.open_holds, version = balance.version + 1, updated_at = now()
            FROM unnest($1::text::text[], $2::text::bigint[], $3::text::bigint[], $4::text::bigint[],
                        $5::text::bigint[])
                AS change (user_id, available, held, owed, open_holds)
            WHERE balance.user_id = change.user_id
            """,
            *_encoded(touched, (arrays.texts,) + (arrays.bigints,) * 4),
        )


class _Statement:
    """Data-modifying statements joined into one: `WITH w0 AS (...), w1 AS (...) SELECT`."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self._arguments: list[Any] = []

    def add(self, sql: str, *arguments: Any) -> str:
        """Adds a clause; answers its name, for a later clause to read what it returns."""
        offset = len(self._arguments)
        renumbered = _PARAMETER.sub(lambda match: f"${int(match.group(1)) + offset}", sql.strip())
        name = f"w{len(self.parts)}"
        self.parts.append(f"{name} AS ({renumbered})")
        self._arguments.extend(arguments)
        return name

    async def execute(self, connection: Connection) -> None:
        await connection.execute("WITH " + ",\n".join(self.parts) + "\nSELECT", *self._arguments)


_PARAMETER = re.compile(r"\$(\d+)")


# How each column of a batch's rows travels: as an array literal (see ledger/arrays.py), or, for
# timestamps, as a list asyncpg encodes.
_Encoder = Callable[[Sequence[Any]], Any]
_TRANSACTION_COLUMNS: tuple[_Encoder, ...] = (
    arrays.bigints,  # id
    arrays.texts,  # kind
    arrays.texts,  # idempotency_key
    arrays.byteas,  # request_hash
    arrays.texts,  # user_id
    arrays.optional_texts,  # reference
    arrays.bigints,  # reverses_transaction_id
    arrays.texts,  # actor
    arrays.optional_texts,  # reason
    arrays.texts,  # result
)
_NEW_LOT_COLUMNS: tuple[_Encoder, ...] = (
    arrays.bigints,  # id
    arrays.texts,  # user_id
    arrays.texts,  # category
    arrays.bigints,  # amount
    arrays.bigints,  # remaining
    list,  # expires_at
    list,  # expired_at
    arrays.bigints,  # source_transaction_id
)
_NEW_HOLD_COLUMNS: tuple[_Encoder, ...] = (
    arrays.bigints,  # id
    arrays.texts,  # user_id
    arrays.bigints,  # amount
    arrays.texts,  # status
    arrays.bigints,  # captured
    arrays.bigints,  # refunded
    list,  # expires_at
    arrays.optional_texts,  # reference
    arrays.bigints,  # hold_transaction_id
    arrays.bigints,  # settle_transaction_id
    list,  # settled_at
    arrays.texts,  # share_lot_ids
    arrays.texts,  # share_drawn
    arrays.texts,  # share_returned
    arrays.texts,  # share_refunded
)
_CHANGED_HOLD_COLUMNS: tuple[_Encoder, ...] = (
    arrays.bigints,  # id
    arrays.texts,  # status
    arrays.bigints,  # captured
    arrays.bigints,  # refunded
    arrays.bigints,  # settle_transaction_id
    list,  # settled_at
    arrays.texts,  # share_returned
    arrays.texts,  # share_refunded
)


def _share_arrays(shares: Sequence[rules.Share]) -> tuple[str, str, str, str]:
    """A hold's share columns (lot ids, drawn, returned, refunded) as array literals. Most holds draw from
    one lot, and a batch writes hundreds of holds: that case skips the general join."""
    if len(shares) == 1:
        (share,) = shares
        return f"{{{share.lot_id}}}", f"{{{share.drawn}}}", f"{{{share.returned}}}", f"{{{share.refunded}}}"
    return (
        arrays.bigints([share.lot_id for share in shares]),
        arrays.bigints([share.drawn for share in shares]),
        arrays.bigints([share.returned for share in shares]),
        arrays.bigints([share.refunded for share in shares]),
    )


def _encoded(rows: list[tuple[Any, ...]], encoders: tuple[_Encoder, ...]) -> list[Any]:
    """The rows' columns, each encoded for its parameter."""
    columns: Iterable[Sequence[Any]] = zip(*rows, strict=True) if rows else [() for _ in encoders]
    return [encode(column) for encode, column in zip(encoders, columns, strict=True)]


async def _lock_users(connection: Connection, user_ids: list[str]) -> dict[str, _User]:
    """Locks every user's balance row in user-id order (no deadlock), creating missing users first."""
    rows = await connection.fetch(_LOCK_USERS, user_ids)
    if len(rows) < len(user_ids):
        missing = sorted(set(user_ids) - {row["user_id"] for row in rows})
        await connection.execute(_CREATE_USERS, missing)
        rows = await connection.fetch(_LOCK_USERS, user_ids)
    assert len(rows) == len(user_ids), "every user has a balance row after creation"
    users = {}
    for row in rows:
        state = rules.UserState(
            user_id=row["user_id"],
            available=row["available"],
            held=row["held"],
            owed=row["owed"],
            open_holds=row["open_holds"],
        )
        account_ids = {
            rules.AVAILABLE: row["available_account_id"],
            rules.HELD: row["held_account_id"],
            rules.DEBT: row["debt_account_id"],
        }
        users[row["user_id"]] = _User(state=state, account_ids=account_ids)
    return users


_LOCK_USERS = """
SELECT user_id, available_account_id, held_account_id, debt_account_id, available, held, owed, open_holds
FROM ledger_balances WHERE user_id = ANY($1::text[]) ORDER BY user_id FOR UPDATE
"""

# Accounts and the balance row are created together, in user order, so that two processes creating
# the same users wait for each other instead of deadlocking.
_CREATE_USERS = """
WITH wanted AS (SELECT DISTINCT user_id FROM unnest($1::text[]) AS user_id),
created AS (
    INSERT INTO ledger_accounts (code, kind, user_id)
    SELECT 'user:' || user_id || ':' || role, 'user_' || role, user_id
    FROM wanted CROSS JOIN unnest(ARRAY['available', 'held', 'debt']) AS role
    ORDER BY 1
    ON CONFLICT (code) DO NOTHING
    RETURNING id, kind, user_id
)
INSERT INTO ledger_balances (user_id, available_account_id, held_account_id, debt_account_id)
SELECT user_id,
       max(id) FILTER (WHERE kind = 'user_available'),
       max(id) FILTER (WHERE kind = 'user_held'),
       max(id) FILTER (WHERE kind = 'user_debt')
FROM created GROUP BY user_id ORDER BY user_id
ON CONFLICT (user_id) DO NOTHING
"""


# Everything a batch reads once its users are locked, in one round trip: results stored under its keys,
# the holds it names, its users' lots (spendable ones, and any those holds drew from), and fresh ids.
# It must run after the lock, as its own statement: a statement's snapshot is taken when it starts.
# The holds come as column arrays with an element per share (one aggregate pass keeps them aligned):
# sending a few hundred holds as an array of records cost PostgreSQL more than reading them.
_READ_LOCKED = """
WITH holds AS MATERIALIZED (
    SELECT id, user_id, amount, status, captured, refunded, expires_at, reference, hold_transaction_id,
           settle_transaction_id, settled_at, share_lot_ids, share_drawn, share_returned, share_refunded
    FROM ledger_holds WHERE id = ANY($2::text::bigint[])
)
SELECT
    ARRAY(SELECT ROW(k.idempotency_key, t.request_hash, t.result::text) FROM ledger_idempotency_keys k
          JOIN ledger_transactions t ON t.id = k.transaction_id AND t.created_at = k.created_at
          WHERE k.idempotency_key = ANY($1::text::text[])) AS stored,
    hold_columns.*,
    ARRAY(SELECT ROW(id, user_id, category, amount, remaining, expires_at, expired_at) FROM ledger_lots
          WHERE user_id = ANY($3::text::text[])
            AND (remaining > 0 OR id = ANY(ARRAY(SELECT unnest(share_lot_ids) FROM holds)))) AS lots,
    ARRAY(SELECT nextval('ledger_transactions_id_seq') FROM generate_series(1, $5)) AS transaction_ids,
    ARRAY(SELECT nextval('ledger_lots_id_seq') FROM generate_series(1, $6 + (
        SELECT coalesce(sum(cardinality(holds.share_lot_ids)), 0)::int
        FROM unnest($4::text::bigint[]) AS refund (hold_id) JOIN holds ON holds.id = refund.hold_id
    ))) AS lot_ids,
    ARRAY(SELECT nextval('ledger_holds_id_seq') FROM generate_series(1, $7)) AS hold_ids
FROM (
    SELECT array_agg(h.id) AS h_id, array_agg(h.user_id) AS h_user_id, array_agg(h.amount) AS h_amount,
           array_agg(h.status) AS h_status, array_agg(h.captured) AS h_captured,
           array_agg(h.refunded) AS h_refunded, array_agg(h.expires_at) AS h_expires_at,
           array_agg(h.reference) AS h_reference, array_agg(h.hold_transaction_id) AS h_hold_transaction_id,
           array_agg(h.settle_transaction_id) AS h_settle_transaction_id, array_agg(h.settled_at) AS h_settled_at,
           array_agg(s.position) AS h_share_position, array_agg(s.lot_id) AS h_share_lot_id,
           array_agg(s.drawn) AS h_share_drawn, array_agg(s.returned) AS h_share_returned,
           array_agg(s.refunded) AS h_share_refunded
    FROM holds h
    CROSS JOIN LATERAL unnest(h.share_lot_ids, h.share_drawn, h.share_returned, h.share_refunded)
        WITH ORDINALITY AS s (lot_id, drawn, returned, refunded, position)
) AS hold_columns
"""
_HOLD_COLUMNS = (
    "h_id",
    "h_user_id",
    "h_amount",
    "h_status",
    "h_captured",
    "h_refunded",
    "h_expires_at",
    "h_reference",
    "h_hold_transaction_id",
    "h_settle_transaction_id",
    "h_settled_at",
    "h_share_position",
    "h_share_lot_id",
    "h_share_drawn",
    "h_share_returned",
    "h_share_refunded",
)


def _holds_from(columns: Sequence[Sequence[Any] | None]) -> dict[int, _HoldRecord]:
    """The holds read after the lock: column arrays with one element per share, a hold's shares in order."""
    holds: dict[int, _HoldRecord] = {}
    if columns[0] is None:
        return holds  # no hold named: every aggregate is NULL
    for (
        hold_id,
        user_id,
        amount,
        status,
        captured,
        refunded,
        expires_at,
        reference,
        hold_transaction_id,
        settle_transaction_id,
        settled_at,
        position,
        lot_id,
        drawn,
        returned,
        refunded_share,
    ) in zip(*columns, strict=True):
        share = rules.Share(lot_id=lot_id, drawn=drawn, returned=returned, refunded=refunded_share)
        record = holds.get(hold_id)
        if record is not None:
            assert position == len(record.hold.shares) + 1, "a hold's shares arrive in draw order"
            record.hold.shares.append(share)
            continue
        assert position == 1, "a hold's shares arrive in draw order"
        hold = rules.Hold(
            id=hold_id,
            user_id=user_id,
            amount=amount,
            status=status,
            expires_at=expires_at,
            shares=[share],
            captured=captured,
            refunded=refunded,
        )
        holds[hold_id] = _HoldRecord(
            hold=hold,
            reference=reference,
            hold_transaction_id=hold_transaction_id,
            settle_transaction_id=settle_transaction_id,
            settled_at=settled_at,
        )
    return holds


def _add_lots(users: dict[str, _User], rows: Iterable[Sequence[Any]]) -> None:
    for lot_id, user_id, category, amount, remaining, expires_at, expired_at in rows:
        users[user_id].state.lots[lot_id] = rules.Lot(
            id=lot_id,
            category=category,
            amount=amount,
            remaining=remaining,
            expires_at=expires_at,
            expired_at=expired_at,
        )
