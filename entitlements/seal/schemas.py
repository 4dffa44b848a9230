"""The seal's responses. Checkpoints and transactions have the shapes the offline verifier reads
(entitlements/seal/offline.py, `checkpoint_to_json`, `transaction_to_json`): one definition of each."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

import ledger
from entitlements.schemas import Struct

Hex32 = Annotated[str, msgspec.Meta(min_length=64, max_length=64, pattern="^[0-9a-f]{64}$")]


class CheckpointRange(Struct, frozen=True):
    """Chain positions (1-based, both ends in) and the transactions at either end."""

    first_position: int
    last_position: int
    first_transaction_id: int
    last_transaction_id: int
    transactions: int


class CheckpointOut(Struct, frozen=True):
    number: int
    format_version: int
    range: CheckpointRange
    # The chain's value before the range's first transaction, and after its last (the head).
    previous_head: Hex32
    head: Hex32
    merkle_root: Hex32
    created_at: datetime
    public_key_id: str
    # Ed25519, 64 bytes as hex, over the bytes docs/seal.md describes.
    signature: str


class CheckpointPage(Struct, frozen=True):
    items: list[CheckpointOut]
    # The `after` of the next page; null when this page reached the last checkpoint.
    next: int | None


class SealedThrough(Struct, frozen=True):
    position: int
    transaction_id: int | None
    # The commit cursor of that transaction (as GET /v1/ledger/feed takes it): export from here on.
    cursor: str | None


class SealLag(Struct, frozen=True):
    # Committed ledger transactions not sealed yet (counted up to SEAL_LAG_COUNT_MAX: `capped`).
    transactions: int
    capped: bool
    # How long the next one to seal has waited since it was written.
    seconds: float


class Signing(Struct, frozen=True):
    # Whether the process that answered is sealing (it has a key and sealing is enabled).
    sealing: bool
    key_id: str | None
    public_key: str | None
    # Why it is not sealing, when it is not.
    detail: str | None


class SealStatus(Struct, frozen=True):
    sealed_through: SealedThrough
    lag: SealLag
    # The chain's value at sealed_through; null before anything is sealed.
    head: Hex32 | None
    last_checkpoint: CheckpointOut | None
    format_version: int
    signing: Signing


class SealedTransactionOut(Struct, frozen=True):
    """A transaction as the seal covers it: the fields of a transactions export's NDJSON row."""

    transaction_id: int
    kind: str
    idempotency_key: str
    user_id: str
    reference: str | None
    reverses_transaction_id: int | None
    actor: str
    reason: str | None
    created_at: datetime
    postings: list[ledger.Posting]


class MerkleStep(Struct, frozen=True):
    side: Literal["left", "right"]
    hash: Hex32


class ProofOut(Struct, frozen=True):
    transaction: SealedTransactionOut
    # SHA-256(0x00 || canonical bytes): the transaction's leaf.
    hash: Hex32
    position: int
    # The leaf's index in its checkpoint's tree (position - the range's first position).
    leaf_index: int
    # From the leaf up; the sides also follow from leaf_index and the range's size.
    merkle_path: list[MerkleStep]
    checkpoint: CheckpointOut


class DifferenceOut(Struct, frozen=True):
    problem: str
    detail: str
    position: int | None
    transaction_id: int | None
    checkpoint: int | None


class VerificationOut(Struct, frozen=True):
    ok: bool
    # The chain positions checked, and how many transactions and checkpoints that was.
    first_position: int
    last_position: int
    transactions: int
    checkpoints: int
    # Whether the check reached the seal's head; if not, `next_checkpoint` continues it.
    complete: bool
    next_checkpoint: int | None
    difference: DifferenceOut | None
