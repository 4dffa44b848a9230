"""The seal's use cases: its status, checkpoints, inclusion proofs, bounded verification, the head that
exports and period closes record, and the /metrics gauges. See docs/seal.md."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import asyncpg
import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from prometheus_client import Gauge

import ledger
from entitlements.errors import NotFound, NotSealed, SealMismatch
from entitlements.seal import queries
from entitlements.seal.offline import (
    FORMAT_VERSION,
    FormatError,
    canonical_bytes,
    checkpoint_to_json,
    key_id,
    leaf_hash,
    load_public_key,
    merkle_path,
    merkle_root,
    transaction_to_json,
)
from entitlements.seal.records import sealed_transaction, signed_checkpoint, state_row
from entitlements.seal.schemas import (
    CheckpointOut,
    CheckpointPage,
    DifferenceOut,
    MerkleStep,
    ProofOut,
    SealedThrough,
    SealedTransactionOut,
    SealLag,
    SealStatus,
    Signing,
    VerificationOut,
)
from entitlements.seal.signing import SealKeyProblem, SigningKey, load_signing_key
from entitlements.seal.verify import verify
from entitlements.settings import SealSettings, SettingsError

CHECKPOINTS_PAGE_MAX = 1000
LAG_TRANSACTIONS = Gauge("moments_seal_lag_transactions", "Committed ledger transactions not sealed yet")
LAG_SECONDS = Gauge("moments_seal_lag_seconds", "How long the next ledger transaction to seal has waited")
SEALED_POSITION = Gauge("moments_seal_sealed_position", "Ledger transactions in the seal's chain")
SEALING = Gauge("moments_seal_sealing", "1 when this process seals (it has a signing key), else 0")


@dataclass(frozen=True, kw_only=True)
class Signer:
    """This process's part in the seal: its signing key (None: it does not seal, `problem` says why) and
    the public keys it verifies checkpoints with (its own and those of earlier keys)."""

    key: SigningKey | None
    problem: str | None
    enabled: bool
    public_keys: dict[str, Ed25519PublicKey]

    @property
    def sealing(self) -> bool:
        return self.enabled and self.key is not None


def signer_for(settings: SealSettings) -> Signer:
    """Read once at start-up. A missing key is not an error (the service runs, and says it does not
    seal); an unreadable earlier public key is a configuration error."""
    try:
        key: SigningKey | None = load_signing_key(settings)
        problem = None if settings.enabled else "sealing is off in this process (SEAL_ENABLED=false)"
    except SealKeyProblem as missing:
        key, problem = None, f"not sealing: {missing}"
    public_keys = {key.key_id: key.public_key} if key is not None else {}
    public_keys |= _public_keys(settings.public_key_files)
    SEALING.set(1 if settings.enabled and key is not None else 0)
    return Signer(key=key, problem=problem, enabled=settings.enabled, public_keys=public_keys)


def _public_keys(paths: tuple[Path, ...]) -> dict[str, Ed25519PublicKey]:
    keys = {}
    for path in paths:
        try:
            public = load_public_key(path.read_bytes())
        except (OSError, FormatError) as error:
            raise SettingsError(f"SEAL_PUBLIC_KEY_FILES: {path}: {error}") from None
        keys[key_id(public)] = public
    return keys


def public_keys_from_files(paths: list[Path]) -> dict[str, Ed25519PublicKey]:
    """`moments verify --public-key`: the published keys an auditor trusts, and no others."""
    return _public_keys(tuple(paths))


def checkpoint_out(row: asyncpg.Record) -> CheckpointOut:
    return msgspec.convert(checkpoint_to_json(signed_checkpoint(row)), CheckpointOut)


async def seal_head(connection: ledger.Connection | asyncpg.Pool) -> str | None:
    """The chain's head (hex) at the sealed position, or None while nothing is sealed: what an export's
    manifest and a closed period record, so that the ledger they describe can be checked against the seal."""
    row = await state_row(connection, queries.HEAD)
    return bytes(row["head"]).hex() if row["sealed_position"] > 0 else None


async def _lag(connection: ledger.Connection | asyncpg.Pool, count_max: int) -> SealLag:
    row = await state_row(connection, queries.LAG, count_max)
    oldest = row["oldest_unsealed_at"]
    seconds = max(0.0, (row["now"] - oldest).total_seconds()) if oldest is not None else 0.0
    return SealLag(transactions=row["unsealed"], capped=row["unsealed"] >= count_max, seconds=round(seconds, 3))


async def status(pool: asyncpg.Pool, settings: SealSettings, signer: Signer) -> SealStatus:
    async with pool.acquire() as connection, connection.transaction(isolation="repeatable_read", readonly=True):
        state = await state_row(connection, queries.STATE)
        lag = await _lag(connection, settings.lag_count_max)
        last = await connection.fetchrow(queries.LAST_CHECKPOINT)
    sealed = state["sealed_position"] > 0
    position = ledger.CommitPosition(xid=int(state["sealed_xid"]), transaction_id=state["sealed_transaction_id"])
    key = signer.key
    return SealStatus(
        sealed_through=SealedThrough(
            position=state["sealed_position"],
            transaction_id=position.transaction_id if sealed else None,
            cursor=ledger.encode_position(position) if sealed else None,
        ),
        lag=lag,
        head=bytes(state["head"]).hex() if sealed else None,
        last_checkpoint=checkpoint_out(last) if last is not None else None,
        format_version=FORMAT_VERSION,
        signing=Signing(
            sealing=signer.sealing,
            key_id=key.key_id if key is not None else None,
            public_key=key.public_pem if key is not None else None,
            detail=signer.problem,
        ),
    )


async def refresh_metrics(pool: asyncpg.Pool, count_max: int) -> None:
    """Read when /metrics is scraped: the same figures from every process."""
    lag = await _lag(pool, count_max)
    LAG_TRANSACTIONS.set(lag.transactions)
    LAG_SECONDS.set(lag.seconds)
    SEALED_POSITION.set((await state_row(pool, queries.HEAD))["sealed_position"])


async def checkpoints(pool: asyncpg.Pool, *, after: int, limit: int) -> CheckpointPage:
    assert 1 <= limit <= CHECKPOINTS_PAGE_MAX
    rows = await pool.fetch(queries.CHECKPOINTS_AFTER, after, limit + 1)
    items = [checkpoint_out(row) for row in rows[:limit]]
    return CheckpointPage(items=items, next=items[-1].number if len(rows) > limit else None)


async def proof(pool: asyncpg.Pool, transaction_id: int) -> ProofOut:
    """The transaction as sealed, its leaf, its Merkle path and the signed checkpoint that covers it."""
    async with pool.acquire() as connection, connection.transaction(isolation="repeatable_read", readonly=True):
        row = await connection.fetchrow(queries.TRANSACTION, transaction_id)
        if row is None:
            raise NotFound(f"no ledger transaction {transaction_id}")
        chain = await connection.fetchrow(queries.CHAIN_OF_TRANSACTION, transaction_id)
        if chain is None:
            raise NotSealed(f"transaction {transaction_id} is not sealed yet; ask again shortly")
        position = chain["position"]
        covering = await connection.fetchrow(queries.CHECKPOINT_COVERING, position)
        if covering is None:
            raise NotSealed(
                f"transaction {transaction_id} is sealed (position {position}) but not yet in a signed checkpoint; "
                "ask again shortly"
            )
        leaves = [
            bytes(leaf["leaf_hash"])
            for leaf in await connection.fetch(
                queries.LEAVES_BETWEEN, covering["first_position"], covering["last_position"]
            )
        ]
    transaction = sealed_transaction(row)
    leaf = leaf_hash(canonical_bytes(transaction))
    if leaf != bytes(chain["leaf_hash"]) or merkle_root(leaves) != bytes(covering["merkle_root"]):
        raise SealMismatch(
            f"transaction {transaction_id} or its checkpoint no longer matches what was sealed: the ledger or the "
            "seal was changed afterwards; `moments verify` names the first difference"
        )
    index = position - covering["first_position"]
    return ProofOut(
        transaction=msgspec.convert(transaction_to_json(transaction), SealedTransactionOut),
        hash=leaf.hex(),
        position=position,
        leaf_index=index,
        merkle_path=[MerkleStep(side=side, hash=sibling.hex()) for side, sibling in merkle_path(leaves, index)],
        checkpoint=checkpoint_out(covering),
    )


async def verify_window(
    pool: asyncpg.Pool, settings: SealSettings, signer: Signer, *, checkpoint: int | None
) -> VerificationOut:
    """A bounded part of `moments verify`: from checkpoint `checkpoint` (default: the most recent
    checkpoints of about SEAL_VERIFY_TRANSACTIONS_MAX transactions) whole checkpoints up to that many
    transactions, and the chained tail after the last checkpoint when the window reaches it."""
    async with pool.acquire() as connection:
        state = await connection.fetchrow(queries.STATE)
        # Without its state row the seal was tampered with: `verify` says so.
        last_number = state["checkpoint_number"] if state is not None else 0
        if state is None:
            checkpoint = 1
        elif checkpoint is None:
            earliest = state["checkpointed_position"] - settings.verify_transactions_max
            checkpoint = await connection.fetchval(queries.WINDOW_START, earliest) or max(1, last_number)
        elif checkpoint > last_number + 1:
            raise NotFound(f"no checkpoint {checkpoint}: there are {last_number} (verify from 1 to {last_number + 1})")
        result = await verify(
            connection,
            signer.public_keys,
            first_checkpoint=checkpoint,
            transactions_max=settings.verify_transactions_max,
        )
    difference = result.difference
    return VerificationOut(
        ok=result.ok,
        first_position=result.first_position,
        last_position=result.last_position,
        transactions=result.transactions,
        checkpoints=result.checkpoints,
        complete=result.complete,
        next_checkpoint=result.next_checkpoint,
        difference=msgspec.convert(difference, DifferenceOut, from_attributes=True) if difference else None,
    )
