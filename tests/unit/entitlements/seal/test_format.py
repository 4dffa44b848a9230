"""The seal's format (entitlements/seal/offline.py): canonical bytes, the Merkle tree and its paths, the
signed checkpoint bytes. Pure, no database."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from entitlements.seal import offline as o

TRANSACTION = o.SealedTransaction(
    transaction_id=42,
    kind="capture",
    idempotency_key="generation:g-1:capture",
    user_id="user-7",
    reference="g-1",
    reverses_transaction_id=None,
    actor="system:dispatcher",
    reason=None,
    created_at=datetime(2026, 12, 2, 3, 27, 15, 123, tzinfo=UTC),
    postings=(("user:user-7:held", -80), ("system:revenue", 80)),
)
# The test vector of docs/seal.md: a reimplementation must produce these.
TRANSACTION_LEAF = "ab5e2c2e37c5941ba63570b285a70370160f0c0e15c65015e1914add5bc80090"


def test_the_canonical_bytes_are_the_documented_fields_in_order() -> None:
    encoded = o.canonical_bytes(TRANSACTION)
    expected = b"".join(
        len(text).to_bytes(4, "big") + text
        for text in (
            b"moments-ledger-transaction/1",
            b"42",
            b"capture",
            b"generation:g-1:capture",
            b"user-7",
            b"g-1",
        )
    )
    expected += b"\xff\xff\xff\xff"  # reverses_transaction_id: NULL
    expected += b"".join(len(t).to_bytes(4, "big") + t for t in (b"system:dispatcher",))
    expected += b"\xff\xff\xff\xff"  # reason: NULL
    expected += b"".join(
        len(t).to_bytes(4, "big") + t
        for t in (b"2026-12-02T03:27:15.000123Z", b"2", b"system:revenue", b"80", b"user:user-7:held", b"-80")
    )
    assert encoded == expected
    assert o.leaf_hash(encoded).hex() == hashlib.sha256(b"\x00" + expected).hexdigest()


def test_the_documented_test_vector() -> None:
    assert o.leaf_hash(o.canonical_bytes(TRANSACTION)).hex() == TRANSACTION_LEAF
    assert (
        o.chain_next(o.GENESIS, o.canonical_bytes(TRANSACTION)).hex()
        == hashlib.sha256(bytes(32) + o.canonical_bytes(TRANSACTION)).hexdigest()
    )


def test_null_and_empty_text_differ_and_posting_order_does_not_matter() -> None:
    empty_reason = TRANSACTION._replace(reason="")
    assert o.canonical_bytes(empty_reason) != o.canonical_bytes(TRANSACTION)
    reordered = TRANSACTION._replace(postings=TRANSACTION.postings[::-1])
    assert o.canonical_bytes(reordered) == o.canonical_bytes(TRANSACTION)


def test_the_same_instant_in_another_zone_encodes_alike_and_a_naive_one_is_refused() -> None:
    elsewhere = TRANSACTION.created_at.astimezone(timezone(timedelta(hours=-5)))
    assert o.canonical_bytes(TRANSACTION._replace(created_at=elsewhere)) == (o.canonical_bytes(TRANSACTION))
    with pytest.raises(o.FormatError):
        o.rfc3339(datetime(2026, 1, 1))


def test_json_round_trips_and_refuses_wrong_types() -> None:
    sorted_postings = TRANSACTION._replace(postings=tuple(sorted(TRANSACTION.postings)))
    assert o.transaction_from_json(o.transaction_to_json(TRANSACTION)) == sorted_postings
    row = o.transaction_to_json(TRANSACTION)
    for field, value in (
        ("transaction_id", "42"),
        ("transaction_id", True),
        ("reason", 5),
        ("created_at", "yesterday"),
    ):
        with pytest.raises(o.FormatError, match=field):
            o.transaction_from_json(row | {field: value})
    with pytest.raises(o.FormatError, match="postings"):
        o.transaction_from_json({k: v for k, v in row.items() if k != "postings"})
    with pytest.raises(o.FormatError):
        o.canonical_bytes(o.transaction_from_json(row | {"reason": "\ud800"}))  # a lone surrogate is no text


def _reference_root(leaves: Sequence[bytes]) -> bytes:
    """RFC 6962 section 2.1, as written there: split at the largest power of two below n."""
    if len(leaves) == 1:
        return leaves[0]
    split = 1 << ((len(leaves) - 1).bit_length() - 1)
    return o.node_hash(_reference_root(leaves[:split]), _reference_root(leaves[split:]))


@given(st.integers(min_value=1, max_value=70), st.data())
def test_every_path_leads_to_the_root_and_the_tree_is_rfc_6962s(size: int, data: st.DataObject) -> None:
    leaves = [hashlib.sha256(str(n).encode()).digest() for n in range(size)]
    root = o.merkle_root(leaves)
    assert root == _reference_root(leaves)
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    path = o.merkle_path(leaves, index)
    hashes = [sibling for _, sibling in path]
    assert o.root_from_path(leaves[index], index, size, hashes) == root
    # Another leaf, index or size does not lead there.
    assert o.root_from_path(hashlib.sha256(b"other").digest(), index, size, hashes) != root
    if size > 1:
        other = (index + 1) % size
        with contextlib.suppress(o.FormatError):
            assert o.root_from_path(leaves[index], other, size, hashes) != root
    with pytest.raises(o.FormatError):
        o.root_from_path(leaves[index], index, size, [*hashes, root])


def test_a_leaf_is_never_an_inner_node() -> None:
    left, right = hashlib.sha256(b"a").digest(), hashlib.sha256(b"b").digest()
    assert o.merkle_root([left, right]) != hashlib.sha256(left + right).digest()
    # Without promotion-by-duplication, [a, b, c] and [a, b, c, c] have different roots.
    c = hashlib.sha256(b"c").digest()
    assert o.merkle_root([left, right, c]) != o.merkle_root([left, right, c, c])


def test_a_checkpoint_signature_covers_every_field() -> None:
    key = Ed25519PrivateKey.generate()
    checkpoint = o.Checkpoint(
        number=3,
        first_position=9,
        last_position=12,
        first_transaction_id=20,
        last_transaction_id=31,
        previous_head=bytes(32),
        head=b"\x01" * 32,
        merkle_root=b"\x02" * 32,
        created_at=datetime(2026, 12, 2, tzinfo=UTC),
        key_id=o.key_id(key.public_key()),
    )
    signature = o.sign(key, checkpoint)
    assert o.signature_valid(key.public_key(), checkpoint, signature)
    for field, value in (
        ("number", 4),
        ("last_position", 13),
        ("head", b"\x03" * 32),
        ("key_id", "x"),
        ("created_at", datetime(2026, 12, 3, tzinfo=UTC)),
    ):
        changed = o.Checkpoint(**{**checkpoint.__dict__, field: value})
        assert not o.signature_valid(key.public_key(), changed, signature), field


def test_public_keys_load_from_pem_or_hex_and_nothing_else() -> None:
    public = Ed25519PrivateKey.generate().public_key()
    from_pem = o.load_public_key(o.public_pem(public).encode())
    assert o.key_id(from_pem) == o.key_id(public)
    raw = from_pem.public_bytes_raw().hex()
    assert o.key_id(o.load_public_key(raw.encode())) == o.key_id(public)
    for junk in (b"", b"zz", b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"):
        with pytest.raises(o.FormatError):
            o.load_public_key(junk)
