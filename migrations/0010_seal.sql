-- The ledger's seal (entitlements/seal/, docs/seal.md): a hash chain over ledger transactions in commit
-- order, and signed checkpoints of it. The sealer only reads the ledger and writes these tables, so a
-- ledger commit never waits for it.

-- Where the sealer stands: one row, locked FOR UPDATE SKIP LOCKED by the sealing transaction, so that of
-- any number of processes one seals at a time and the others skip (a row lock ends with its transaction:
-- nothing is held across transactions, which PgBouncer's transaction mode needs).
CREATE TABLE ledger_seal_state (
    id smallint PRIMARY KEY CHECK (id = 1),
    -- The chain's length, and the commit position (ledger/feed.py) of its last transaction.
    sealed_position bigint NOT NULL CHECK (sealed_position >= 0),
    sealed_xid xid8 NOT NULL,
    sealed_transaction_id bigint NOT NULL,
    -- The chain's value at sealed_position (32 zero bytes before the first transaction).
    head bytea NOT NULL CHECK (length(head) = 32),
    sealed_at timestamptz,
    -- The last checkpoint: its number, the last position it covers and when it was written.
    checkpoint_number bigint NOT NULL CHECK (checkpoint_number >= 0),
    checkpointed_position bigint NOT NULL CHECK (checkpointed_position BETWEEN 0 AND sealed_position),
    checkpointed_at timestamptz
);
INSERT INTO ledger_seal_state (id, sealed_position, sealed_xid, sealed_transaction_id, head, checkpoint_number,
                               checkpointed_position)
VALUES (1, 0, '0', 0, '\x0000000000000000000000000000000000000000000000000000000000000000', 0, 0);

CREATE TRIGGER ledger_seal_state_no_delete BEFORE DELETE ON ledger_seal_state
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_seal_state_no_truncate BEFORE TRUNCATE ON ledger_seal_state
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

-- One row per sealed transaction: what it hashed to when it was sealed. `moments verify` compares the
-- ledger with these to name the first transaction that differs; the checkpoints' signatures protect these
-- rows in turn (rewriting them changes the roots).
CREATE TABLE ledger_seal_chain (
    position bigint PRIMARY KEY CHECK (position >= 1),
    transaction_id bigint NOT NULL,
    written_by_xid xid8 NOT NULL,
    -- SHA-256(0x00 || canonical bytes): the transaction's leaf in its checkpoint's Merkle tree.
    leaf_hash bytea NOT NULL CHECK (length(leaf_hash) = 32),
    -- SHA-256(chain at position - 1 || canonical bytes).
    chain_hash bytea NOT NULL CHECK (length(chain_hash) = 32)
);
-- A proof starts from a transaction id.
CREATE UNIQUE INDEX ledger_seal_chain_transaction ON ledger_seal_chain (transaction_id);

CREATE TRIGGER ledger_seal_chain_append_only BEFORE UPDATE OR DELETE ON ledger_seal_chain
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_seal_chain_no_truncate BEFORE TRUNCATE ON ledger_seal_chain
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

-- Signed checkpoints: consecutive ranges of chain positions, each with the chain's head at its end, the
-- Merkle root of its transactions' leaves, and an Ed25519 signature over all of it by a key kept outside
-- the database (entitlements/seal/offline.py, `checkpoint_message`, says which bytes are signed).
CREATE TABLE ledger_seal_checkpoints (
    number bigint PRIMARY KEY CHECK (number >= 1),
    format_version smallint NOT NULL,
    first_position bigint NOT NULL CHECK (first_position >= 1),
    last_position bigint NOT NULL,
    first_transaction_id bigint NOT NULL,
    last_transaction_id bigint NOT NULL,
    previous_head bytea NOT NULL CHECK (length(previous_head) = 32),
    head bytea NOT NULL CHECK (length(head) = 32),
    merkle_root bytea NOT NULL CHECK (length(merkle_root) = 32),
    created_at timestamptz NOT NULL,
    key_id text NOT NULL CHECK (length(key_id) BETWEEN 1 AND 64),
    signature bytea NOT NULL CHECK (length(signature) = 64),
    CHECK (last_position >= first_position)
);
-- The checkpoint that covers a position: the first whose range ends at or after it.
CREATE UNIQUE INDEX ledger_seal_checkpoints_last_position ON ledger_seal_checkpoints (last_position);

CREATE TRIGGER ledger_seal_checkpoints_append_only BEFORE UPDATE OR DELETE ON ledger_seal_checkpoints
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_seal_checkpoints_no_truncate BEFORE TRUNCATE ON ledger_seal_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
