"""Verifying the seal against the ledger: every hash and root recomputed from the data, every signature
checked with public keys only, and the first difference named.

The ledger is read in commit order (as the sealer read it) beside the chain's stored rows, position by
position, in one repeatable-read snapshot. A transaction whose bytes differ from what was sealed, one that
is gone, one that was not there when its neighbours were sealed, or two out of their sealed order, is
named by its id and position; a checkpoint whose signature does not verify, or whose head and root do not
match although every stored hash does (the stored hashes were rewritten with the data), is named with
its range. `moments verify` runs it over everything; `GET /v1/ledger/verify` over a bounded window.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

import ledger
from entitlements.seal import queries
from entitlements.seal.offline import (
    FORMAT_VERSION,
    GENESIS,
    SignedCheckpoint,
    canonical_bytes,
    chain_next,
    leaf_hash,
    merkle_root,
    signature_problem,
)
from entitlements.seal.records import every_transaction_after, signed_checkpoint

PAGE_ROWS = 1000


@dataclass(frozen=True, kw_only=True)
class Difference:
    """The first thing that did not verify. `problem` is stable: changed, deleted, inserted, reordered,
    chain_changed, chain_missing, checkpoint_mismatch, checkpoint_gap, bad_signature, unknown_key,
    head_mismatch, state_missing."""

    problem: str
    detail: str
    position: int | None
    transaction_id: int | None
    checkpoint: int | None


@dataclass(frozen=True, kw_only=True)
class Verification:
    # The chain positions checked (first_position > last_position: nothing was sealed there).
    first_position: int
    last_position: int
    checkpoints: int
    # Whether the window reached the seal's head (a bounded check may stop before it).
    complete: bool
    # Where a bounded check would go on from (the next checkpoint's number), if it stopped early.
    next_checkpoint: int | None
    difference: Difference | None

    @property
    def ok(self) -> bool:
        return self.difference is None

    @property
    def transactions(self) -> int:
        return max(0, self.last_position - self.first_position + 1)


class _Found(Exception):
    def __init__(self, difference: Difference) -> None:
        self.difference = difference


def _fail(
    problem: str, detail: str, *, position: int | None, transaction_id: int | None, checkpoint: int | None = None
) -> _Found:
    return _Found(
        Difference(
            problem=problem, detail=detail, position=position, transaction_id=transaction_id, checkpoint=checkpoint
        )
    )


async def _checkpoints_from(connection: ledger.Connection, number: int) -> AsyncIterator[SignedCheckpoint]:
    after = number - 1
    while True:
        rows = await connection.fetch(queries.CHECKPOINTS_AFTER, after, PAGE_ROWS)
        for row in rows:
            if row["format_version"] != FORMAT_VERSION:
                raise _fail(
                    "checkpoint_mismatch",
                    f"checkpoint {row['number']} claims format {row['format_version']}, not {FORMAT_VERSION}",
                    position=row["first_position"],
                    transaction_id=row["first_transaction_id"],
                    checkpoint=row["number"],
                )
            yield signed_checkpoint(row)
        if len(rows) < PAGE_ROWS:
            return
        after = rows[-1]["number"]


async def _chain_rows(connection: ledger.Connection, first: int, last: int) -> AsyncIterator[asyncpg.Record]:
    while first <= last:
        rows = await connection.fetch(queries.CHAIN_BETWEEN, first, min(last, first + PAGE_ROWS - 1))
        for row in rows:
            yield row
        first += PAGE_ROWS


async def verify(
    connection: ledger.Connection,
    public_keys: Mapping[str, Ed25519PublicKey],
    *,
    first_checkpoint: int = 1,
    transactions_max: int | None = None,
) -> Verification:
    """From checkpoint `first_checkpoint` on: the whole sealed ledger after it, or (with
    `transactions_max`) whole checkpoints until about that many transactions (at least one checkpoint),
    plus the chained positions not yet in a checkpoint if the window reaches them."""
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        return await _verify(connection, public_keys, first_checkpoint, transactions_max)


async def _window(
    connection: ledger.Connection, state: asyncpg.Record, first_checkpoint: int, transactions_max: int | None
) -> tuple[list[SignedCheckpoint], int, int | None]:
    """The checkpoints to check, the last position to check and the next checkpoint left for later."""
    chosen: list[SignedCheckpoint] = []
    total = 0
    async for signed in _checkpoints_from(connection, first_checkpoint):
        size = signed.checkpoint.transactions
        if transactions_max is not None and chosen and total + size > transactions_max:
            return chosen, chosen[-1].checkpoint.last_position, signed.checkpoint.number
        chosen.append(signed)
        total += size
    return chosen, state["sealed_position"], None


def _nothing_checked(difference: Difference) -> Verification:
    return Verification(
        first_position=1, last_position=0, checkpoints=0, complete=False, next_checkpoint=None, difference=difference
    )


async def _verify(
    connection: ledger.Connection,
    public_keys: Mapping[str, Ed25519PublicKey],
    first_checkpoint: int,
    transactions_max: int | None,
) -> Verification:
    state = await connection.fetchrow(queries.STATE)
    if state is None:
        missing = Difference(
            problem="state_missing",
            detail="the seal's state row is gone (removed behind the service's back)",
            position=None,
            transaction_id=None,
            checkpoint=None,
        )
        return _nothing_checked(missing)
    try:
        chosen, last_position, next_checkpoint = await _window(connection, state, first_checkpoint, transactions_max)
    except _Found as found:
        return _nothing_checked(found.difference)
    if chosen:
        start = chosen[0].checkpoint.first_position - 1
        head = chosen[0].checkpoint.previous_head
    else:
        # No checkpoint from there on: only the chained tail after the last one (if that is where we are).
        start = state["checkpointed_position"] if first_checkpoint == state["checkpoint_number"] + 1 else last_position
        head = GENESIS if start == 0 else b""
    verification = Verification(
        first_position=start + 1,
        last_position=last_position,
        checkpoints=len(chosen),
        complete=next_checkpoint is None,
        next_checkpoint=next_checkpoint,
        difference=None,
    )
    try:
        await _walk(connection, public_keys, state, chosen, start, head, last_position)
    except _Found as found:
        return replace(verification, difference=found.difference)
    return verification


async def _walk(
    connection: ledger.Connection,
    public_keys: Mapping[str, Ed25519PublicKey],
    state: asyncpg.Record,
    chosen: list[SignedCheckpoint],
    start: int,
    head: bytes,
    last_position: int,
) -> None:
    if start > 0:
        before = await connection.fetchrow(queries.CHAIN_BETWEEN, start, start)
        if before is None:
            raise _fail("chain_missing", f"no chain row at position {start}", position=start, transaction_id=None)
        if not head:
            head = bytes(before["chain_hash"])
        after = ledger.CommitPosition(xid=int(before["xid"]), transaction_id=before["transaction_id"])
    else:
        after = ledger.START
    checkpoints = iter(chosen)
    current = next(checkpoints, None)
    previous: SignedCheckpoint | None = None
    leaves: list[bytes] = []
    transactions = every_transaction_after(connection, after, page=PAGE_ROWS)
    stored_rows = _chain_rows(connection, start + 1, last_position)
    position = start
    async for stored in stored_rows:
        position += 1
        if stored["position"] != position:
            raise _fail("chain_missing", f"no chain row at position {position}", position=position, transaction_id=None)
        if current is not None and position == current.checkpoint.first_position:
            _enter(current, previous, public_keys, stored)
        transaction = await anext(transactions, None)
        sealed_id = stored["transaction_id"]
        if transaction is None or transaction.transaction_id != sealed_id:
            raise await _misplaced(connection, position, sealed_id, transaction.transaction_id if transaction else None)
        canonical = canonical_bytes(transaction)
        leaf = leaf_hash(canonical)
        head = chain_next(head, canonical)
        if leaf != bytes(stored["leaf_hash"]):
            raise _fail(
                "changed",
                f"transaction {sealed_id} (position {position}) differs from what was sealed",
                position=position,
                transaction_id=sealed_id,
            )
        if head != bytes(stored["chain_hash"]):
            raise _fail(
                "chain_changed",
                f"the stored chain at position {position} (transaction {sealed_id}) does not follow from the ledger",
                position=position,
                transaction_id=sealed_id,
            )
        leaves.append(leaf)
        if current is not None and position == current.checkpoint.last_position:
            _leave(current, head, leaves, sealed_id)
            previous, current, leaves = current, next(checkpoints, None), []
    if position != last_position:
        raise _fail(
            "chain_missing", f"no chain row at position {position + 1}", position=position + 1, transaction_id=None
        )
    if last_position == state["sealed_position"] and last_position > 0 and head != bytes(state["head"]):
        raise _fail(
            "head_mismatch",
            f"the seal's recorded head differs from the chain recomputed through position {last_position}",
            position=last_position,
            transaction_id=state["sealed_transaction_id"],
        )


def _enter(
    signed: SignedCheckpoint,
    previous: SignedCheckpoint | None,
    public_keys: Mapping[str, Ed25519PublicKey],
    stored: asyncpg.Record,
) -> None:
    """The checks of a checkpoint made before its range is read: its signature, and that it continues the
    one before it."""
    checkpoint = signed.checkpoint
    where = checkpoint.describe()

    def fail(problem: str, detail: str) -> _Found:
        return _fail(
            problem,
            f"{where}: {detail}",
            position=checkpoint.first_position,
            transaction_id=checkpoint.first_transaction_id,
            checkpoint=checkpoint.number,
        )

    refused = signature_problem(signed, public_keys)
    if refused is not None:
        problem, detail = refused
        raise fail(problem, detail.removeprefix(f"{where}: "))
    if previous is not None and (
        checkpoint.number != previous.checkpoint.number + 1
        or checkpoint.first_position != previous.checkpoint.last_position + 1
        or checkpoint.previous_head != previous.checkpoint.head
    ):
        raise fail("checkpoint_gap", f"does not continue checkpoint {previous.checkpoint.number}")
    if checkpoint.first_transaction_id != stored["transaction_id"]:
        raise fail("checkpoint_mismatch", f"starts at transaction {stored['transaction_id']} in the stored chain")


def _leave(signed: SignedCheckpoint, head: bytes, leaves: list[bytes], last_id: int) -> None:
    """The checks made at a checkpoint's last position: its last transaction, head and Merkle root."""
    checkpoint = signed.checkpoint
    if (
        checkpoint.last_transaction_id == last_id
        and checkpoint.head == head
        and checkpoint.merkle_root == merkle_root(leaves)
    ):
        return
    raise _fail(
        "checkpoint_mismatch",
        f"checkpoint {checkpoint.number}: the ledger's transactions {checkpoint.first_transaction_id}–"
        f"{checkpoint.last_transaction_id} (positions {checkpoint.first_position}–{checkpoint.last_position}) do not "
        "give its signed head and root, though each matches its stored hash: data and stored hashes were rewritten "
        "together somewhere in that range",
        position=checkpoint.first_position,
        transaction_id=checkpoint.first_transaction_id,
        checkpoint=checkpoint.number,
    )


async def _misplaced(connection: ledger.Connection, position: int, sealed_id: int, found_id: int | None) -> _Found:
    """Position `position` was sealed as `sealed_id` but the ledger has `found_id` there (None: nothing):
    say whether the sealed one was deleted, the found one inserted, or the two are out of order."""
    if not await connection.fetchval(queries.TRANSACTION_EXISTS, sealed_id):
        return _fail(
            "deleted",
            f"transaction {sealed_id}, sealed at position {position}, is no longer in the ledger",
            position=position,
            transaction_id=sealed_id,
        )
    if found_id is not None and await connection.fetchrow(queries.CHAIN_OF_TRANSACTION, found_id) is None:
        return _fail(
            "inserted",
            f"transaction {found_id} is in the sealed past (at position {position}, where transaction {sealed_id} was "
            "sealed) but was never sealed: it was inserted behind the ledger's back",
            position=position,
            transaction_id=found_id,
        )
    found = f"transaction {found_id} is there instead" if found_id is not None else "the ledger ends before it"
    return _fail(
        "reordered",
        f"transaction {sealed_id} was sealed at position {position}, but {found}: transactions were moved or swapped",
        position=position,
        transaction_id=sealed_id,
    )
