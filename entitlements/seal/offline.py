"""The ledger seal's format and its offline verifier, in one file: the standard library and `cryptography`.

Everything an auditor needs to check the seal without the service (docs/seal.md says the same in prose):
the canonical bytes of a transaction (format 1), the hash chain, the Merkle tree of a checkpoint's range,
the bytes a checkpoint's Ed25519 signature covers, and two checks on top of them:

    python offline.py export --public-key seal.pub --checkpoints checkpoints.json transactions.ndjson
    python offline.py proof --public-key seal.pub proof.json

The service imports this module for the same functions, so there is one definition of the format; the
file imports nothing of the service, so it can be copied out and run anywhere (a test runs it so).
Exit status: 0 when everything given verifies, 1 when something does not (the first thing is named).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

FORMAT_VERSION = 1
TRANSACTION_TAG = "moments-ledger-transaction/1"
CHECKPOINT_TAG = "moments-ledger-checkpoint/1"
HASH_BYTES = 32
SIGNATURE_BYTES = 64
# The chain's value before its first transaction.
GENESIS = bytes(HASH_BYTES)
# RFC 6962's domain separation: a leaf can never be taken for an inner node, nor the reverse.
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
# A field is its length (4 bytes, big-endian) then its UTF-8 bytes; this length stands for NULL.
NULL_LENGTH = 0xFFFFFFFF
KEY_ID_HEX_CHARS = 16
Side = Literal["left", "right"]


class FormatError(ValueError):
    """Input that is not what the format says (a bad export line, a proof with a missing field)."""


class SealedTransaction(NamedTuple):
    """The immutable fields of a ledger transaction that the seal covers: exactly an export row's. (A
    named tuple: the sealer and `verify` make one per transaction.)"""

    transaction_id: int
    kind: str
    idempotency_key: str
    user_id: str
    reference: str | None
    reverses_transaction_id: int | None
    actor: str
    reason: str | None
    created_at: datetime
    # (account code, amount) pairs, in any order: the encoding sorts them.
    postings: tuple[tuple[str, int], ...]


@dataclass(frozen=True, kw_only=True)
class Checkpoint:
    """What a checkpoint's signature covers (the range is of chain positions, 1-based, both ends in)."""

    number: int
    first_position: int
    last_position: int
    first_transaction_id: int
    last_transaction_id: int
    previous_head: bytes
    head: bytes
    merkle_root: bytes
    created_at: datetime
    key_id: str

    @property
    def transactions(self) -> int:
        return self.last_position - self.first_position + 1

    def describe(self) -> str:
        return f"checkpoint {self.number} (transactions {self.first_transaction_id}–{self.last_transaction_id})"


# --- the canonical bytes -------------------------------------------------------------------------------


def rfc3339(moment: datetime) -> str:
    """An instant as the format writes it: UTC, microseconds, `Z` (2026-12-02T03:27:15.000123Z)."""
    if moment.tzinfo is None:
        raise FormatError("a timestamp without a time zone")
    u = moment.astimezone(UTC)
    return f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:{u.second:02d}.{u.microsecond:06d}Z"


_NULL_FIELD = NULL_LENGTH.to_bytes(4, "big")


def _field(value: str | int | None) -> bytes:
    if value is None:
        return _NULL_FIELD
    try:
        data = (str(value) if isinstance(value, int) else value).encode("utf-8")
    except UnicodeEncodeError:
        raise FormatError("text that is not valid Unicode") from None
    if len(data) >= NULL_LENGTH:
        raise FormatError("a field longer than the format allows")
    return len(data).to_bytes(4, "big") + data


_TRANSACTION_TAG_FIELD = _field(TRANSACTION_TAG)


def canonical_bytes(transaction: SealedTransaction) -> bytes:
    """Format 1: the tag, then each field in this order, then the postings sorted by account code (by code
    point, which is UTF-8 byte order) and amount; integers as decimal text, the timestamp as `rfc3339`."""
    t = transaction
    postings = sorted(t.postings)
    field = _field
    parts = [
        _TRANSACTION_TAG_FIELD,
        field(t.transaction_id),
        field(t.kind),
        field(t.idempotency_key),
        field(t.user_id),
        field(t.reference),
        field(t.reverses_transaction_id),
        field(t.actor),
        field(t.reason),
        field(rfc3339(t.created_at)),
        field(len(postings)),
    ]
    for account, amount in postings:
        parts.append(field(account))
        parts.append(field(amount))
    return b"".join(parts)


def leaf_hash(canonical: bytes) -> bytes:
    """A transaction's hash: the leaf of its checkpoint's Merkle tree."""
    return hashlib.sha256(LEAF_PREFIX + canonical).digest()


def chain_next(previous: bytes, canonical: bytes) -> bytes:
    """hash_n = SHA-256(hash_{n-1} || canonical bytes of transaction n)."""
    return hashlib.sha256(previous + canonical).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


# --- the Merkle tree -----------------------------------------------------------------------------------
# Built bottom-up: each level pairs neighbours left to right; a last node without a partner moves up
# unchanged (never paired with itself, which would let two different ranges share a root). This is the
# tree of RFC 6962 section 2.1.


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    if not leaves:
        raise FormatError("a Merkle tree of nothing")
    level = list(leaves)
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        level = paired + ([level[-1]] if len(level) % 2 else [])
    return level[0]


def _steps(index: int, size: int) -> Iterator[tuple[Side | None, int]]:
    """For each level from the leaves up: which side the sibling is on (None: promoted, no sibling) and
    the sibling's index on that level."""
    while size > 1:
        if index % 2:
            yield "left", index - 1
        elif index + 1 < size:
            yield "right", index + 1
        else:
            yield None, index
        index //= 2
        size = (size + 1) // 2


def merkle_path(leaves: Sequence[bytes], index: int) -> list[tuple[Side, bytes]]:
    """The siblings from leaf `index` up to the root, each with the side it is on."""
    if not 0 <= index < len(leaves):
        raise FormatError("a leaf index outside the tree")
    level = list(leaves)
    path: list[tuple[Side, bytes]] = []
    for side, sibling in _steps(index, len(leaves)):
        if side is not None:
            path.append((side, level[sibling]))
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        level = paired + ([level[-1]] if len(level) % 2 else [])
    return path


def root_from_path(leaf: bytes, index: int, size: int, path: Sequence[bytes]) -> bytes:
    """The root a leaf and its path lead to; the sides follow from `index` and `size`, not from the proof."""
    if not 0 <= index < size:
        raise FormatError("a leaf index outside the tree")
    node, siblings = leaf, iter(path)
    for side, _ in _steps(index, size):
        if side is None:
            continue
        sibling = next(siblings, None)
        if sibling is None:
            raise FormatError("a Merkle path shorter than the tree is deep")
        node = node_hash(sibling, node) if side == "left" else node_hash(node, sibling)
    if next(siblings, None) is not None:
        raise FormatError("a Merkle path longer than the tree is deep")
    return node


# --- checkpoints and keys ------------------------------------------------------------------------------


def checkpoint_message(checkpoint: Checkpoint) -> bytes:
    """The bytes the signature covers, fields as `canonical_bytes` writes them; hashes as lowercase hex."""
    c = checkpoint
    return b"".join(
        _field(value)
        for value in (
            CHECKPOINT_TAG,
            c.number,
            c.first_position,
            c.last_position,
            c.first_transaction_id,
            c.last_transaction_id,
            c.previous_head.hex(),
            c.head.hex(),
            c.merkle_root.hex(),
            rfc3339(c.created_at),
            c.key_id,
        )
    )


def key_id(public_key: Ed25519PublicKey) -> str:
    """The first 16 hex digits of the SHA-256 of the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:KEY_ID_HEX_CHARS]


def sign(private_key: Ed25519PrivateKey, checkpoint: Checkpoint) -> bytes:
    return private_key.sign(checkpoint_message(checkpoint))


def signature_valid(public_key: Ed25519PublicKey, checkpoint: Checkpoint, signature: bytes) -> bool:
    try:
        public_key.verify(signature, checkpoint_message(checkpoint))
    except InvalidSignature:
        return False
    return True


def load_public_key(data: bytes) -> Ed25519PublicKey:
    """A public key file: PEM (what `moments seal-key` prints) or the raw key as 64 hex digits."""
    text = data.strip()
    try:
        if text.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(text)
        else:
            key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(text.decode("ascii")))
    except ValueError as error:
        raise FormatError(f"not an Ed25519 public key ({error})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise FormatError("not an Ed25519 public key")
    return key


def public_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode(
        "ascii"
    )


# --- JSON as the API and the exports write it ----------------------------------------------------------


def _member(data: Mapping[str, Any], name: str, kind: type | tuple[type, ...], *, nullable: bool = False) -> Any:
    if name not in data:
        raise FormatError(f"{name} is missing")
    value = data[name]
    if value is None and nullable:
        return None
    # bool is an int to Python; never to this format.
    if isinstance(value, bool) or not isinstance(value, kind):
        raise FormatError(f"{name} has the wrong type")
    return value


def _timestamp(data: Mapping[str, Any], name: str) -> datetime:
    text = _member(data, name, str)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise FormatError(f"{name} is not an RFC 3339 timestamp") from None
    if moment.tzinfo is None:
        raise FormatError(f"{name} has no time zone")
    return moment


def _hash(data: Mapping[str, Any], name: str, size: int = HASH_BYTES) -> bytes:
    text = _member(data, name, str)
    try:
        value = bytes.fromhex(text)
    except ValueError:
        raise FormatError(f"{name} is not hex") from None
    if len(value) != size:
        raise FormatError(f"{name} is not {size} bytes")
    return value


def transaction_from_json(data: Any) -> SealedTransaction:
    """An export row (NDJSON line) or a proof's `transaction`."""
    if not isinstance(data, dict):
        raise FormatError("a transaction is not a JSON object")
    postings = _member(data, "postings", list)
    pairs = []
    for posting in postings:
        if not isinstance(posting, dict):
            raise FormatError("a posting is not a JSON object")
        pairs.append((_member(posting, "account", str), _member(posting, "amount", int)))
    return SealedTransaction(
        transaction_id=_member(data, "transaction_id", int),
        kind=_member(data, "kind", str),
        idempotency_key=_member(data, "idempotency_key", str),
        user_id=_member(data, "user_id", str),
        reference=_member(data, "reference", str, nullable=True),
        reverses_transaction_id=_member(data, "reverses_transaction_id", int, nullable=True),
        actor=_member(data, "actor", str),
        reason=_member(data, "reason", str, nullable=True),
        created_at=_timestamp(data, "created_at"),
        postings=tuple(pairs),
    )


def transaction_to_json(transaction: SealedTransaction) -> dict[str, Any]:
    """The export row's shape, postings sorted by account code."""
    t = transaction
    return {
        "transaction_id": t.transaction_id,
        "kind": t.kind,
        "idempotency_key": t.idempotency_key,
        "user_id": t.user_id,
        "reference": t.reference,
        "reverses_transaction_id": t.reverses_transaction_id,
        "actor": t.actor,
        "reason": t.reason,
        "created_at": rfc3339(t.created_at),
        "postings": [{"account": account, "amount": amount} for account, amount in sorted(t.postings)],
    }


@dataclass(frozen=True, kw_only=True)
class SignedCheckpoint:
    checkpoint: Checkpoint
    signature: bytes


def checkpoint_from_json(data: Any) -> SignedCheckpoint:
    """A checkpoint as `GET /v1/ledger/checkpoints` lists it (and a proof carries it)."""
    if not isinstance(data, dict):
        raise FormatError("a checkpoint is not a JSON object")
    if _member(data, "format_version", int) != FORMAT_VERSION:
        raise FormatError(f"checkpoint format {data['format_version']} is not {FORMAT_VERSION}")
    covered = _member(data, "range", dict)
    checkpoint = Checkpoint(
        number=_member(data, "number", int),
        first_position=_member(covered, "first_position", int),
        last_position=_member(covered, "last_position", int),
        first_transaction_id=_member(covered, "first_transaction_id", int),
        last_transaction_id=_member(covered, "last_transaction_id", int),
        previous_head=_hash(data, "previous_head"),
        head=_hash(data, "head"),
        merkle_root=_hash(data, "merkle_root"),
        created_at=_timestamp(data, "created_at"),
        key_id=_member(data, "public_key_id", str),
    )
    if not 1 <= checkpoint.first_position <= checkpoint.last_position:
        raise FormatError(f"checkpoint {checkpoint.number} has an empty or negative range")
    return SignedCheckpoint(checkpoint=checkpoint, signature=_hash(data, "signature", SIGNATURE_BYTES))


def checkpoint_to_json(signed: SignedCheckpoint) -> dict[str, Any]:
    c = signed.checkpoint
    return {
        "number": c.number,
        "format_version": FORMAT_VERSION,
        "range": {
            "first_position": c.first_position,
            "last_position": c.last_position,
            "first_transaction_id": c.first_transaction_id,
            "last_transaction_id": c.last_transaction_id,
            "transactions": c.transactions,
        },
        "previous_head": c.previous_head.hex(),
        "head": c.head.hex(),
        "merkle_root": c.merkle_root.hex(),
        "created_at": rfc3339(c.created_at),
        "public_key_id": c.key_id,
        "signature": signed.signature.hex(),
    }


# --- the two offline checks ----------------------------------------------------------------------------


@dataclass
class Outcome:
    """What a check found: `problem` names the first thing that did not verify (None: all did)."""

    problem: str | None = None
    notes: list[str] = field(default_factory=list)
    transactions_verified: int = 0
    checkpoints_verified: int = 0

    @property
    def ok(self) -> bool:
        return self.problem is None


def signature_problem(signed: SignedCheckpoint, public_keys: Mapping[str, Ed25519PublicKey]) -> tuple[str, str] | None:
    """Why a checkpoint's signature does not verify, as (unknown_key | bad_signature, what to say)."""
    checkpoint = signed.checkpoint
    key = public_keys.get(checkpoint.key_id)
    if key is None:
        return "unknown_key", f"{checkpoint.describe()}: signed by key {checkpoint.key_id}, not among the keys given"
    if not signature_valid(key, checkpoint, signed.signature):
        return "bad_signature", f"{checkpoint.describe()}: its signature does not verify with key {checkpoint.key_id}"
    return None


def verify_proof(proof: Any, public_keys: Mapping[str, Ed25519PublicKey]) -> Outcome:
    """A proof from `GET /v1/ledger/transactions/{id}/proof`: the transaction's bytes give its hash, its
    path leads to the checkpoint's root, and the checkpoint's signature verifies."""
    if not isinstance(proof, dict):
        raise FormatError("a proof is not a JSON object")
    transaction = transaction_from_json(_member(proof, "transaction", dict))
    signed = checkpoint_from_json(_member(proof, "checkpoint", dict))
    checkpoint = signed.checkpoint
    index = _member(proof, "leaf_index", int)
    path_items = _member(proof, "merkle_path", list)
    path = []
    for step in path_items:
        if not isinstance(step, dict):
            raise FormatError("a Merkle path step is not a JSON object")
        path.append(_hash(step, "hash"))
    named = f"transaction {transaction.transaction_id}"
    leaf = leaf_hash(canonical_bytes(transaction))
    if leaf != _hash(proof, "hash"):
        return Outcome(problem=f"{named}: its bytes hash to {leaf.hex()}, not the proof's hash")
    if _member(proof, "position", int) != checkpoint.first_position + index:
        return Outcome(problem=f"{named}: its position is not the checkpoint's first position plus its leaf index")
    try:
        root = root_from_path(leaf, index, checkpoint.transactions, path)
    except FormatError as error:
        return Outcome(problem=f"{named}: {error}")
    if root != checkpoint.merkle_root:
        return Outcome(
            problem=f"{named}: its Merkle path leads to {root.hex()}, not checkpoint {checkpoint.number}'s root"
        )
    refused = signature_problem(signed, public_keys)
    if refused is not None:
        return Outcome(problem=refused[1])
    return Outcome(
        transactions_verified=1,
        checkpoints_verified=1,
        notes=[f"{named} is in checkpoint {checkpoint.number}, signed by key {checkpoint.key_id}"],
    )


def verify_export(
    rows: Iterable[Any],
    checkpoints: Sequence[SignedCheckpoint],
    public_keys: Mapping[str, Ed25519PublicKey],
    *,
    seal_head: bytes | None = None,
) -> Outcome:
    """An export's rows (in commit order, as the export writes them) against signed checkpoints.

    The chain is picked up at the first row that begins a checkpoint's range (from that checkpoint's
    previous head) and followed to the last row; every checkpoint that begins on the way must continue the
    chain there, and one whose whole range the rows cover must match in its last transaction, head and
    Merkle root. Rows before the chain is picked up are counted, not verified; rows after the last covered
    checkpoint are chained but not signed yet. With `seal_head` (an export manifest's), the chain must
    pass through that head."""
    outcome = Outcome()
    for signed in checkpoints:
        refused = signature_problem(signed, public_keys)
        if refused is not None:
            outcome.problem = refused[1]
            return outcome
    by_first = {signed.checkpoint.first_transaction_id: signed for signed in checkpoints}
    current: Checkpoint | None = None
    started = False
    head = GENESIS
    leaves: list[bytes] = []
    position = skipped_before = unsigned_after = 0
    head_seen = seal_head is None
    for number, row in enumerate(rows, start=1):
        transaction = transaction_from_json(row)
        starting = by_first.get(transaction.transaction_id)
        if not started and starting is None:
            skipped_before += 1
            continue
        if starting is not None:
            checkpoint = starting.checkpoint
            if not started:
                started, head, position = True, checkpoint.previous_head, checkpoint.first_position - 1
            if current is not None:
                outcome.problem = (
                    f"{current.describe()}: the export reaches {checkpoint.describe()} at line {number}, before the "
                    "end of its range; a transaction in it was removed"
                )
                return outcome
            if checkpoint.first_position != position + 1 or checkpoint.previous_head != head:
                outcome.problem = f"{checkpoint.describe()} does not continue the chain of the export at line {number}"
                return outcome
            current, leaves = checkpoint, []
        canonical = canonical_bytes(transaction)
        head = chain_next(head, canonical)
        position += 1
        head_seen = head_seen or head == seal_head
        if current is None:
            unsigned_after += 1
            continue
        leaves.append(leaf_hash(canonical))
        if position < current.last_position:
            continue
        if transaction.transaction_id != current.last_transaction_id:
            outcome.problem = (
                f"{current.describe()}: its range ends at transaction {transaction.transaction_id} in the export "
                f"(line {number}); a transaction in it was removed or added"
            )
            return outcome
        if head != current.head or merkle_root(leaves) != current.merkle_root:
            outcome.problem = (
                f"{current.describe()}: the export's transactions in its range differ from what was sealed"
            )
            return outcome
        outcome.transactions_verified += len(leaves)
        outcome.checkpoints_verified += 1
        current = None
    if current is not None:
        outcome.notes.append(f"the export ends inside {current.describe()}: {len(leaves)} row(s) not verified")
    if skipped_before:
        outcome.notes.append(f"{skipped_before} row(s) before the first checkpoint that starts in the export")
    if unsigned_after:
        outcome.notes.append(f"{unsigned_after} row(s) after the last checkpoint: chained, not signed yet")
    if not head_seen:
        outcome.problem = "the chain through the export never reaches the seal head given"
    elif outcome.checkpoints_verified == 0:
        outcome.problem = "no checkpoint's whole range is in the export: nothing could be verified"
    elif seal_head is not None:
        outcome.notes.append(f"the chain passes through the seal head {seal_head.hex()}")
    return outcome


def _public_keys(paths: Sequence[Path]) -> dict[str, Ed25519PublicKey]:
    keys = [load_public_key(path.read_bytes()) for path in paths]
    return {key_id(key): key for key in keys}


def _checkpoints_file(path: Path) -> list[SignedCheckpoint]:
    """A JSON list of checkpoints, or one or more `GET /v1/ledger/checkpoints` pages (an object with
    `items`, or one such object per line)."""
    text = path.read_text(encoding="utf-8")
    try:
        documents = [json.loads(text)]
    except json.JSONDecodeError:
        documents = [json.loads(line) for line in text.splitlines() if line.strip()]
    items: list[Any] = []
    for document in documents:
        items += document["items"] if isinstance(document, dict) and "items" in document else document
    return [checkpoint_from_json(item) for item in items]


def _rows(path: Path) -> Iterator[Any]:
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                raise FormatError(f"line {number} is not JSON") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="verify_offline", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="an NDJSON transactions export against signed checkpoints")
    export.add_argument("export_file", type=Path)
    export.add_argument("--checkpoints", type=Path, required=True, help="GET /v1/ledger/checkpoints pages (JSON)")
    export.add_argument("--seal-head", help="the export manifest's seal_head: the chain must reach it")
    proof = commands.add_parser("proof", help="a proof from GET /v1/ledger/transactions/{id}/proof")
    proof.add_argument("proof_file", type=Path)
    for command in (export, proof):
        command.add_argument(
            "--public-key", type=Path, action="append", required=True, help="a published public key (repeatable)"
        )
    args = parser.parse_args(argv)
    try:
        keys = _public_keys(args.public_key)
        if args.command == "proof":
            outcome = verify_proof(json.loads(args.proof_file.read_text(encoding="utf-8")), keys)
        else:
            head = bytes.fromhex(args.seal_head) if args.seal_head else None
            outcome = verify_export(_rows(args.export_file), _checkpoints_file(args.checkpoints), keys, seal_head=head)
    except (FormatError, OSError, ValueError, KeyError, TypeError) as error:
        print(f"cannot verify: {error}", file=sys.stderr)
        return 1
    for note in outcome.notes:
        print(note)
    if outcome.problem is not None:
        print(f"FAILED: {outcome.problem}")
        return 1
    verified = outcome.transactions_verified
    print(f"verified: {verified} transaction(s) in {outcome.checkpoints_verified} signed checkpoint(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
