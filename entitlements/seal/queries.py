"""Every SQL statement of the seal. It reads the ledger (in commit order, through ledger/feed.py's cursor)
and writes only its own tables (migrations/0010_seal.sql)."""

from __future__ import annotations

from ledger import COMMITTED_AFTER

_STATE_COLUMNS = """
    sealed_position, sealed_xid::text::numeric AS sealed_xid, sealed_transaction_id, head, sealed_at,
    checkpoint_number, checkpointed_position, checkpointed_at
"""

# The sealing transaction's first statement: of any number of sealers, the one that gets the row seals;
# the others skip it and try again later. The database's clock decides when a checkpoint is due.
LOCK_STATE = f"SELECT {_STATE_COLUMNS}, now() AS now FROM ledger_seal_state WHERE id = 1 FOR UPDATE SKIP LOCKED"

STATE = f"SELECT {_STATE_COLUMNS} FROM ledger_seal_state WHERE id = 1"

HEAD = "SELECT sealed_position, head FROM ledger_seal_state WHERE id = 1"

# Transactions with their postings: the fields the seal covers. Outer joins, so that a transaction whose
# postings (or their account) were removed behind the ledger's back still shows up, differently.
_TRANSACTION_FIELDS = """
    t.id, t.kind, t.idempotency_key, t.user_id, t.reference, t.reverses_transaction_id, t.actor, t.reason,
    t.created_at,
    coalesce(array_agg(coalesce(a.code, 'account ' || p.account_id) ORDER BY a.code, p.amount)
             FILTER (WHERE p.transaction_id IS NOT NULL), '{}') AS accounts,
    coalesce(array_agg(p.amount ORDER BY a.code, p.amount) FILTER (WHERE p.transaction_id IS NOT NULL), '{}')
        AS amounts
"""

# $1/$2: the commit position to read after; $3: how many. Below the snapshot's horizon only (ledger/feed.py).
TRANSACTIONS_AFTER = f"""
    WITH c AS ({COMMITTED_AFTER})
    SELECT c.xid, {_TRANSACTION_FIELDS}
    FROM c
    JOIN ledger_transactions t ON t.id = c.id AND t.created_at = c.created_at
    LEFT JOIN ledger_postings p ON p.transaction_id = t.id AND p.created_at = t.created_at
    LEFT JOIN ledger_accounts a ON a.id = p.account_id
    GROUP BY t.id, t.created_at, c.xid
    ORDER BY c.xid, t.id
"""

# By id alone, not through ledger_idempotency_keys: the seal checks the ledger's rows and trusts no other
# table to find them. It probes each month's index once; a proof is one transaction.
TRANSACTION = f"""
    SELECT {_TRANSACTION_FIELDS}
    FROM ledger_transactions t
    LEFT JOIN ledger_postings p ON p.transaction_id = t.id AND p.created_at = t.created_at
    LEFT JOIN ledger_accounts a ON a.id = p.account_id
    WHERE t.id = $1
    GROUP BY t.id, t.created_at
"""

TRANSACTION_EXISTS = "SELECT EXISTS (SELECT FROM ledger_transactions WHERE id = $1)"

INSERT_CHAIN = """
    INSERT INTO ledger_seal_chain (position, transaction_id, written_by_xid, leaf_hash, chain_hash)
    SELECT position, transaction_id, xid::xid8, leaf_hash, chain_hash
    FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bytea[], $5::bytea[])
        AS u (position, transaction_id, xid, leaf_hash, chain_hash)
"""

SEALED = """
    UPDATE ledger_seal_state
    SET sealed_position = $1, sealed_xid = $2::text::xid8, sealed_transaction_id = $3, head = $4, sealed_at = now()
    WHERE id = 1
"""

CHECKPOINTED = """
    UPDATE ledger_seal_state SET checkpoint_number = $1, checkpointed_position = $2, checkpointed_at = $3
    WHERE id = 1
"""

_CHAIN_COLUMNS = "position, transaction_id, written_by_xid::text::numeric AS xid, leaf_hash, chain_hash"

CHAIN_BETWEEN = f"SELECT {_CHAIN_COLUMNS} FROM ledger_seal_chain WHERE position BETWEEN $1 AND $2 ORDER BY position"

CHAIN_OF_TRANSACTION = f"SELECT {_CHAIN_COLUMNS} FROM ledger_seal_chain WHERE transaction_id = $1"

LEAVES_BETWEEN = "SELECT leaf_hash FROM ledger_seal_chain WHERE position BETWEEN $1 AND $2 ORDER BY position"

INSERT_CHECKPOINT = """
    INSERT INTO ledger_seal_checkpoints (
        number, format_version, first_position, last_position, first_transaction_id, last_transaction_id,
        previous_head, head, merkle_root, created_at, key_id, signature
    ) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
"""

_CHECKPOINT_COLUMNS = """
    number, format_version, first_position, last_position, first_transaction_id, last_transaction_id,
    previous_head, head, merkle_root, created_at, key_id, signature
"""

CHECKPOINTS_AFTER = (
    f"SELECT {_CHECKPOINT_COLUMNS} FROM ledger_seal_checkpoints WHERE number > $1 ORDER BY number LIMIT $2"
)

LAST_CHECKPOINT = f"SELECT {_CHECKPOINT_COLUMNS} FROM ledger_seal_checkpoints ORDER BY number DESC LIMIT 1"

# The checkpoint whose range holds position $1 (if it is covered yet).
CHECKPOINT_COVERING = f"""
    SELECT {_CHECKPOINT_COLUMNS} FROM ledger_seal_checkpoints
    WHERE last_position >= $1 AND first_position <= $1
    ORDER BY last_position
    LIMIT 1
"""

# How far behind the seal is: committed ledger transactions after the sealed position (counted up to $1),
# and when the next one to seal was written.
LAG = """
    SELECT
        (SELECT count(*) FROM (
            SELECT FROM ledger_transactions t
            WHERE (t.written_by_xid, t.id) > (s.sealed_xid, s.sealed_transaction_id)
            LIMIT $1) AS u) AS unsealed,
        (SELECT t.created_at FROM ledger_transactions t
         WHERE (t.written_by_xid, t.id) > (s.sealed_xid, s.sealed_transaction_id)
         ORDER BY t.written_by_xid, t.id
         LIMIT 1) AS oldest_unsealed_at,
        now() AS now
    FROM ledger_seal_state s
    WHERE s.id = 1
"""

# Where GET /v1/ledger/verify starts by default: the earliest checkpoint starting after position $1, so the
# checkpoints from there to the last hold at most SEAL_VERIFY_TRANSACTIONS_MAX transactions.
WINDOW_START = "SELECT min(number) FROM ledger_seal_checkpoints WHERE first_position > $1"
