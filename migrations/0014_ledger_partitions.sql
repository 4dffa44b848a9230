-- Monthly partitions of the ledger's two tables that grow with every ledger transaction and are never
-- changed (docs/operations.md, "Partitions"): ledger_transactions and ledger_postings, by the UTC month of
-- the transaction's created_at. Postings carry their transaction's created_at (the same now(): a posting
-- joins only a ledger transaction of its own database transaction), so both tables split at the same
-- instants and a transaction and its postings always sit in partitions of the same month.
--
-- Not partitioned, and why:
-- - ledger_lots and ledger_holds are updated (what is left of a lot, how a hold ended), generations name
--   holds by a foreign key, and both are read by id, which a time key cannot prune.
-- - ledger_seal_chain grows by one narrow row per transaction but is read by position and transaction id
--   only; it has no time of its own. webhook_events, deliveries and attempts are updated, and are the
--   webhooks' own to purge.
--
-- A partitioned table's unique constraints must contain the partition key, so the idempotency key, which
-- must be unique across every month, moves its uniqueness to a table of its own, written in the same
-- statement as the transaction: ledger_idempotency_keys. Its unique transaction_id is also what makes a
-- transaction id unique across months (the partitioned primary key is (id, created_at)), and what the
-- tables outside the ledger that name a transaction (Stripe purchases and invoices) reference.
--
-- Every reference to a transaction by id alone goes through the key table, which also gives its
-- created_at, so that the probe into ledger_transactions names the partition and PostgreSQL prunes the
-- others (at run time, per row, inside the nested loops the check functions keep to). A probe by id alone
-- would descend every month's index.
--
-- On a database with data this migration copies both tables (rows, ids, times and xids byte for byte: the
-- seal hashes them) and builds their indexes afterwards; the service must be stopped while it runs.

-- A refusal names the ledger's table, not the month's partition the row was in.
CREATE OR REPLACE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused',
        coalesce(pg_partition_root(TG_RELID)::text, TG_TABLE_NAME), TG_OP USING ERRCODE = 'check_violation';
END $$;

-- A partition is written only through its parent, whose statement triggers check the ledger's rules; a
-- write into the partition itself would fire none of them.
CREATE FUNCTION ledger_refuse_direct_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is a partition: write to %', TG_TABLE_NAME, TG_ARGV[0] USING ERRCODE = 'check_violation';
END $$;

-- Creates the month's partition of both tables if missing (the month holding `month_of`, in UTC); answers
-- how many tables it created. A partition is made as a table of its own and then attached: ATTACH takes a
-- SHARE UPDATE EXCLUSIVE lock on the parent, which concurrent ledger writes do not wait for (creating it
-- with PARTITION OF would take ACCESS EXCLUSIVE and queue every write behind it). The parent's indexes and
-- row triggers are added to it as it is attached; a partition's statement triggers are its own.
CREATE FUNCTION ledger_create_month_partitions(month_of timestamptz) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    month_start timestamp := date_trunc('month', month_of AT TIME ZONE 'UTC');
    lower_bound timestamptz := month_start AT TIME ZONE 'UTC';
    upper_bound timestamptz := (month_start + interval '1 month') AT TIME ZONE 'UTC';
    parent text;
    partition_name text;
    created integer := 0;
BEGIN
    FOREACH parent IN ARRAY ARRAY['ledger_transactions', 'ledger_postings'] LOOP
        partition_name := parent || '_' || to_char(month_start, 'YYYY_MM');
        CONTINUE WHEN to_regclass(partition_name) IS NOT NULL;
        EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', partition_name, parent);
        EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       parent, partition_name, lower_bound, upper_bound);
        EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON %I FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change()',
                       partition_name || '_no_truncate', partition_name);
        EXECUTE format('CREATE TRIGGER %I BEFORE INSERT ON %I FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_direct_write(%L)',
                       partition_name || '_through_parent', partition_name, parent);
        created := created + 1;
    END LOOP;
    RETURN created;
END $$;

-- Every month from the one holding `from_time` to the one holding `through_time` has its partitions: what
-- the sweeper calls (from now() to LEDGER_PARTITIONS_AHEAD_MONTHS ahead). Answers how many tables it made.
CREATE FUNCTION ledger_ensure_partitions(from_time timestamptz, through_time timestamptz) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    month_start timestamp := date_trunc('month', from_time AT TIME ZONE 'UTC');
    last_month timestamp := date_trunc('month', through_time AT TIME ZONE 'UTC');
    created integer := 0;
BEGIN
    -- Two sweepers creating the same month: the second waits, then finds it made.
    PERFORM pg_advisory_xact_lock(7245019332);
    WHILE month_start <= last_month LOOP
        created := created + ledger_create_month_partitions(month_start AT TIME ZONE 'UTC');
        month_start := month_start + interval '1 month';
    END LOOP;
    RETURN created;
END $$;

-- The unpartitioned tables step aside; their rows are copied below and they are dropped.
ALTER TABLE stripe_purchases DROP CONSTRAINT stripe_purchases_transaction_id_fkey;
ALTER TABLE stripe_invoices DROP CONSTRAINT stripe_invoices_transaction_id_fkey;
ALTER TABLE ledger_transactions RENAME TO ledger_transactions_unpartitioned;
ALTER TABLE ledger_postings RENAME TO ledger_postings_unpartitioned;
ALTER SEQUENCE ledger_transactions_id_seq RENAME TO ledger_transactions_unpartitioned_id_seq;

CREATE TABLE ledger_transactions (
    id bigint GENERATED BY DEFAULT AS IDENTITY,
    kind text NOT NULL CHECK (kind IN (
        'purchase', 'subscription_grant', 'grant', 'hold', 'capture', 'void', 'refund', 'expiry',
        'clawback', 'clawback_reversal'
    )),
    -- Unique through ledger_idempotency_keys, which names this row (ledger_transactions_inserted).
    idempotency_key text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 400),
    request_hash bytea NOT NULL CHECK (length(request_hash) = 32),
    user_id text NOT NULL,
    reference text CHECK (length(reference) <= 400),
    reverses_transaction_id bigint,
    actor text NOT NULL CHECK (length(actor) BETWEEN 1 AND 400),
    reason text CHECK (length(reason) <= 1000),
    result json NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    written_by_xid xid8 NOT NULL DEFAULT pg_current_xact_id()
) PARTITION BY RANGE (created_at);

CREATE TABLE ledger_postings (
    transaction_id bigint NOT NULL,
    account_id bigint NOT NULL,
    amount bigint NOT NULL CHECK (amount <> 0),
    -- The transaction's created_at: the partition key (checked to match by ledger_postings_inserted).
    created_at timestamptz NOT NULL DEFAULT now()
) PARTITION BY RANGE (created_at);

-- Every month the data spans, and this month and the next (the sweeper keeps creating ahead).
SELECT ledger_ensure_partitions(
    least(coalesce((SELECT min(created_at) FROM ledger_transactions_unpartitioned), now()), now()),
    greatest(coalesce((SELECT max(created_at) FROM ledger_transactions_unpartitioned), now()), now())
        + interval '1 month');

INSERT INTO ledger_transactions
    (id, kind, idempotency_key, request_hash, user_id, reference, reverses_transaction_id, actor, reason, result,
     created_at, written_by_xid)
SELECT id, kind, idempotency_key, request_hash, user_id, reference, reverses_transaction_id, actor, reason, result,
       created_at, written_by_xid
FROM ledger_transactions_unpartitioned;

INSERT INTO ledger_postings (transaction_id, account_id, amount, created_at)
SELECT p.transaction_id, p.account_id, p.amount, t.created_at
FROM ledger_postings_unpartitioned p JOIN ledger_transactions_unpartitioned t ON t.id = p.transaction_id;

CREATE TABLE ledger_idempotency_keys (
    idempotency_key text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 400),
    transaction_id bigint NOT NULL,
    -- The transaction's created_at: which partition holds it.
    created_at timestamptz NOT NULL
);
INSERT INTO ledger_idempotency_keys (idempotency_key, transaction_id, created_at)
SELECT idempotency_key, id, created_at FROM ledger_transactions_unpartitioned;

DO $$
BEGIN
    IF (SELECT count(*) FROM ledger_postings) <> (SELECT count(*) FROM ledger_postings_unpartitioned) THEN
        RAISE EXCEPTION 'postings without their transaction: the copy would lose them';
    END IF;
END $$;

SELECT setval('ledger_transactions_id_seq', last_value, is_called) FROM ledger_transactions_unpartitioned_id_seq;
DROP TABLE ledger_postings_unpartitioned;
DROP TABLE ledger_transactions_unpartitioned;

-- The new tables' constraints were named while the old ones still held their names (with a "1" after
-- them): they take the old names back, on the parents and (recursively) every partition, as errors name them.
DO $$
DECLARE
    found record;
BEGIN
    FOR found IN
        SELECT c.conrelid::regclass AS relation, c.conname
        FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid
        WHERE r.relname IN ('ledger_transactions', 'ledger_postings')
          AND c.conname ~ '^ledger_(transactions|postings)_.*_(check|not_null)1$'
    LOOP
        EXECUTE format('ALTER TABLE %s RENAME CONSTRAINT %I TO %I', found.relation, found.conname,
                       left(found.conname, -1));
    END LOOP;
END $$;

-- Indexes after the copy (one build per partition, not one insert per row). What each is for: see
-- 0002_ledger.sql and 0008_commit_order.sql.
ALTER TABLE ledger_idempotency_keys ADD PRIMARY KEY (idempotency_key);
ALTER TABLE ledger_idempotency_keys ADD CONSTRAINT ledger_idempotency_keys_transaction_id_key UNIQUE (transaction_id);
ALTER TABLE ledger_transactions ADD PRIMARY KEY (id, created_at);
CREATE INDEX ledger_transactions_user ON ledger_transactions (user_id, id);
CREATE INDEX ledger_transactions_created ON ledger_transactions USING brin (created_at) WITH (autosummarize = on);
CREATE INDEX ledger_transactions_reference ON ledger_transactions (reference) WHERE reference IS NOT NULL;
CREATE INDEX ledger_transactions_commit_order ON ledger_transactions (written_by_xid, id);
-- (transaction_id, account_id) is unique across months because a posting's created_at is its transaction's.
ALTER TABLE ledger_postings ADD PRIMARY KEY (transaction_id, account_id, created_at);

ALTER TABLE stripe_purchases ADD CONSTRAINT stripe_purchases_transaction_id_fkey
    FOREIGN KEY (transaction_id) REFERENCES ledger_idempotency_keys (transaction_id);
ALTER TABLE stripe_invoices ADD CONSTRAINT stripe_invoices_transaction_id_fkey
    FOREIGN KEY (transaction_id) REFERENCES ledger_idempotency_keys (transaction_id);

-- Append-only, as before. The row triggers are cloned onto every partition (now and as attached); the
-- TRUNCATE triggers, statement triggers, are not, so each partition gets its own (ledger_create_month_partitions).
CREATE TRIGGER ledger_transactions_append_only BEFORE UPDATE OR DELETE ON ledger_transactions
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_transactions_no_truncate BEFORE TRUNCATE ON ledger_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_postings_append_only BEFORE UPDATE OR DELETE ON ledger_postings
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_postings_no_truncate BEFORE TRUNCATE ON ledger_postings
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_idempotency_keys_append_only BEFORE UPDATE OR DELETE ON ledger_idempotency_keys
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_idempotency_keys_no_truncate BEFORE TRUNCATE ON ledger_idempotency_keys
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

-- The balance check's markers name their transactions' times too, so the check finds postings in their
-- partition. The table is empty outside a database transaction. A marker without them (or with fewer)
-- finds no postings for its transactions, and so fails the check rather than skipping it.
ALTER TABLE ledger_balance_checks ADD COLUMN created_ats timestamptz[] NOT NULL DEFAULT '{}';

CREATE OR REPLACE FUNCTION ledger_transaction_balanced() RETURNS trigger LANGUAGE plpgsql
SET enable_hashjoin = off SET enable_mergejoin = off SET enable_seqscan = off SET enable_material = off AS $$
DECLARE
    bad record;
BEGIN
    SELECT t.id, coalesce(s.legs, 0) AS legs, coalesce(s.total, 0) AS total
        INTO bad
        FROM unnest(NEW.transaction_ids, NEW.created_ats) AS t (id, created_at)
        LEFT JOIN LATERAL (
            SELECT count(*) AS legs, sum(p.amount) AS total FROM ledger_postings p
            WHERE p.transaction_id = t.id AND p.created_at = t.created_at
        ) s ON true
        WHERE coalesce(s.legs, 0) < 2 OR s.total <> 0
        ORDER BY t.id
        LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ledger transaction % is unbalanced: % postings summing to %', bad.id, bad.legs, bad.total
            USING ERRCODE = 'check_violation';
    END IF;
    DELETE FROM ledger_balance_checks WHERE id = NEW.id;
    RETURN NULL;
END $$;

-- As before (writer, reversal, marker), and each transaction is named by the key table's row for its key,
-- with its id and time: the key's uniqueness across every month.
CREATE OR REPLACE FUNCTION ledger_transactions_inserted() RETURNS trigger LANGUAGE plpgsql
SET enable_hashjoin = off SET enable_mergejoin = off SET enable_seqscan = off SET enable_material = off AS $$
DECLARE
    bad record;
BEGIN
    SELECT n.id, n.written_by_xid <> pg_current_xact_id() AS foreign_writer, r.id IS NULL AS no_reversed
        INTO bad
        FROM new_transactions n
        LEFT JOIN ledger_idempotency_keys rk ON rk.transaction_id = n.reverses_transaction_id
        LEFT JOIN ledger_transactions r ON r.id = rk.transaction_id AND r.created_at = rk.created_at
        WHERE n.written_by_xid <> pg_current_xact_id()
           OR (n.reverses_transaction_id IS NOT NULL AND (r.id IS NULL OR r.user_id <> n.user_id))
        LIMIT 1;
    IF FOUND THEN
        IF bad.foreign_writer THEN
            RAISE EXCEPTION 'ledger transaction % names another database transaction as its writer', bad.id
                USING ERRCODE = 'check_violation';
        END IF;
        RAISE EXCEPTION 'ledger transaction % reverses a %', bad.id,
            CASE WHEN bad.no_reversed THEN 'transaction which does not exist' ELSE 'transaction of another user' END
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    SELECT n.id INTO bad
        FROM new_transactions n
        LEFT JOIN ledger_idempotency_keys k ON k.idempotency_key = n.idempotency_key
        WHERE k.idempotency_key IS NULL OR k.transaction_id <> n.id OR k.created_at <> n.created_at
        LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ledger transaction % is not the one ledger_idempotency_keys names for its key', bad.id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    INSERT INTO ledger_balance_checks (transaction_ids, created_ats)
        SELECT array_agg(id), array_agg(created_at) FROM new_transactions HAVING count(*) > 0;
    RETURN NULL;
END $$;
CREATE TRIGGER ledger_transactions_inserted AFTER INSERT ON ledger_transactions
    REFERENCING NEW TABLE AS new_transactions FOR EACH STATEMENT EXECUTE FUNCTION ledger_transactions_inserted();

-- A key row names a transaction with that key, at that time: no key is claimed without its transaction.
CREATE FUNCTION ledger_idempotency_keys_inserted() RETURNS trigger LANGUAGE plpgsql
SET enable_hashjoin = off SET enable_mergejoin = off SET enable_seqscan = off SET enable_material = off AS $$
DECLARE
    bad record;
BEGIN
    SELECT k.idempotency_key INTO bad
        FROM new_keys k
        LEFT JOIN ledger_transactions t ON t.id = k.transaction_id AND t.created_at = k.created_at
        WHERE t.id IS NULL OR t.idempotency_key <> k.idempotency_key
        LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'idempotency key % names no ledger transaction with that key', bad.idempotency_key
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER ledger_idempotency_keys_inserted AFTER INSERT ON ledger_idempotency_keys
    REFERENCING NEW TABLE AS new_keys FOR EACH STATEMENT EXECUTE FUNCTION ledger_idempotency_keys_inserted();

-- As before; a posting's time must be its transaction's (the probe is by both, so a posting at another
-- time finds no transaction).
CREATE OR REPLACE FUNCTION ledger_postings_inserted() RETURNS trigger LANGUAGE plpgsql
SET enable_hashjoin = off SET enable_mergejoin = off SET enable_seqscan = off SET enable_material = off AS $$
DECLARE
    found_row record;
    debt_accounts bigint[];
    missing bigint;
BEGIN
    SELECT min(p.transaction_id) FILTER (WHERE t.id IS NULL) AS missing,
           min(p.transaction_id) FILTER (WHERE t.written_by_xid <> pg_current_xact_id()) AS committed
        INTO found_row
        FROM (SELECT DISTINCT transaction_id, created_at FROM new_postings) p
        LEFT JOIN ledger_transactions t ON t.id = p.transaction_id AND t.created_at = p.created_at;
    IF found_row.missing IS NOT NULL THEN
        -- Not at the postings' time: say why, from the transaction found by id (on refusal only).
        missing := found_row.missing;
        SELECT t.created_at, t.written_by_xid <> pg_current_xact_id() AS committed
            INTO found_row
            FROM ledger_idempotency_keys k
            JOIN ledger_transactions t ON t.id = k.transaction_id AND t.created_at = k.created_at
            WHERE k.transaction_id = missing;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'postings for ledger transaction % which does not exist', missing
                USING ERRCODE = 'foreign_key_violation';
        END IF;
        IF found_row.committed THEN
            RAISE EXCEPTION 'ledger transaction % is committed: postings may not be added', missing
                USING ERRCODE = 'check_violation';
        END IF;
        RAISE EXCEPTION 'postings for ledger transaction % are not dated at its time, %', missing, found_row.created_at
            USING ERRCODE = 'check_violation';
    END IF;
    IF found_row.committed IS NOT NULL THEN
        RAISE EXCEPTION 'ledger transaction % is committed: postings may not be added', found_row.committed
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT min(p.account_id) FILTER (WHERE a.id IS NULL) AS no_account,
           array_agg(a.id) FILTER (WHERE a.kind = 'user_debt') AS debt_accounts
        INTO found_row
        FROM (SELECT DISTINCT account_id FROM new_postings) p
        LEFT JOIN ledger_accounts a ON a.id = p.account_id;
    IF found_row.no_account IS NOT NULL THEN
        RAISE EXCEPTION 'posting to account % which does not exist', found_row.no_account
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    debt_accounts := found_row.debt_accounts;
    IF debt_accounts IS NOT NULL THEN
        SELECT min(p.transaction_id) AS debt
            INTO found_row
            FROM new_postings p
            JOIN ledger_transactions t ON t.id = p.transaction_id AND t.created_at = p.created_at
            WHERE p.account_id = ANY (debt_accounts) AND p.amount < 0 AND t.kind <> 'clawback';
        IF found_row.debt IS NOT NULL THEN
            RAISE EXCEPTION 'ledger transaction % creates debt but is not a clawback', found_row.debt
                USING ERRCODE = 'check_violation';
        END IF;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER ledger_postings_inserted AFTER INSERT ON ledger_postings
    REFERENCING NEW TABLE AS new_postings FOR EACH STATEMENT EXECUTE FUNCTION ledger_postings_inserted();

-- Lots and holds name transactions by id alone: found through the key table (id → time → partition).
CREATE OR REPLACE FUNCTION ledger_lots_references() RETURNS trigger LANGUAGE plpgsql
SET enable_hashjoin = off SET enable_mergejoin = off SET enable_seqscan = off SET enable_material = off AS $$
DECLARE
    bad record;
BEGIN
    SELECT l.id, b.user_id IS NULL AS no_user, t.id IS NULL AS no_transaction,
           t.user_id IS DISTINCT FROM l.user_id AS other_user
        INTO bad
        FROM changed_lots l
        LEFT JOIN ledger_balances b ON b.user_id = l.user_id
        LEFT JOIN ledger_idempotency_keys k ON k.transaction_id = l.source_transaction_id
        LEFT JOIN ledger_transactions t ON t.id = k.transaction_id AND t.created_at = k.created_at
        WHERE b.user_id IS NULL OR t.id IS NULL OR t.user_id IS DISTINCT FROM l.user_id
        LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'lot % names a %', bad.id,
            CASE WHEN bad.no_user THEN 'user with no balance row'
                 WHEN bad.no_transaction THEN 'source transaction which does not exist'
                 ELSE 'source transaction of another user' END
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION ledger_holds_references() RETURNS trigger LANGUAGE plpgsql
SET enable_hashjoin = off SET enable_mergejoin = off SET enable_seqscan = off SET enable_material = off AS $$
DECLARE
    bad record;
BEGIN
    SELECT h.id, b.user_id IS NULL AS no_user, ht.id IS NULL AS no_hold_transaction
        INTO bad
        FROM changed_holds h
        LEFT JOIN ledger_balances b ON b.user_id = h.user_id
        LEFT JOIN ledger_idempotency_keys hk ON hk.transaction_id = h.hold_transaction_id
        LEFT JOIN ledger_transactions ht ON ht.id = hk.transaction_id AND ht.created_at = hk.created_at
        LEFT JOIN ledger_idempotency_keys sk ON sk.transaction_id = h.settle_transaction_id
        LEFT JOIN ledger_transactions st ON st.id = sk.transaction_id AND st.created_at = sk.created_at
        WHERE b.user_id IS NULL OR ht.id IS NULL OR (h.settle_transaction_id IS NOT NULL AND st.id IS NULL)
           OR ht.kind <> 'hold' OR ht.user_id <> h.user_id OR (ht.result ->> 'hold_id')::bigint IS DISTINCT FROM h.id
           OR (h.settle_transaction_id IS NOT NULL
               AND (st.kind NOT IN ('capture', 'void') OR (st.result ->> 'hold_id')::bigint IS DISTINCT FROM h.id))
        LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'hold % names a %', bad.id,
            CASE WHEN bad.no_user THEN 'user with no balance row'
                 WHEN bad.no_hold_transaction THEN 'hold transaction which does not exist'
                 ELSE 'ledger transaction which is not its own hold or settlement' END
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    SELECT h.id, s.lot_id, l.id IS NULL AS no_lot
        INTO bad
        FROM changed_holds h
        CROSS JOIN LATERAL unnest(h.share_lot_ids) AS s (lot_id)
        LEFT JOIN ledger_lots l ON l.id = s.lot_id
        WHERE l.id IS NULL OR l.user_id <> h.user_id
        LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'share of hold % names %', bad.id,
            CASE WHEN bad.no_lot THEN format('lot %s which does not exist', bad.lot_id)
                 ELSE format('lot %s of another user', bad.lot_id) END
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    SELECT h.id INTO bad
        FROM changed_holds h
        WHERE CASE WHEN cardinality(h.share_lot_ids) = 1
                   THEN h.share_drawn[1] <> h.amount OR h.share_returned[1] + h.share_refunded[1] > h.share_drawn[1]
                   ELSE EXISTS (
                       SELECT FROM unnest(h.share_lot_ids, h.share_drawn, h.share_returned, h.share_refunded)
                           AS share (lot_id, drawn, returned, refunded)
                       HAVING sum(drawn) <> h.amount OR bool_or(returned + refunded > drawn)
                           OR count(*) <> count(DISTINCT lot_id))
              END
        LIMIT 1;
    IF FOUND THEN
        SELECT h.id, s.drawn_total, s.overdrawn, s.lots, s.distinct_lots
            INTO bad
            FROM changed_holds h
            CROSS JOIN LATERAL (
                SELECT sum(drawn) AS drawn_total, bool_or(returned + refunded > drawn) AS overdrawn,
                       count(*) AS lots, count(DISTINCT lot_id) AS distinct_lots
                FROM unnest(h.share_lot_ids, h.share_drawn, h.share_returned, h.share_refunded)
                    AS share (lot_id, drawn, returned, refunded)
            ) AS s
            WHERE h.id = bad.id;
        RAISE EXCEPTION 'shares of hold % %', bad.id,
            CASE WHEN bad.overdrawn THEN 'give back and refund more than they drew'
                 WHEN bad.lots <> bad.distinct_lots THEN 'name a lot twice'
                 ELSE format('drew %s, not the hold''s amount', bad.drawn_total) END
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION ledger_holds_settled() RETURNS trigger LANGUAGE plpgsql
SET enable_hashjoin = off SET enable_mergejoin = off SET enable_seqscan = off SET enable_material = off AS $$
DECLARE
    bad record;
BEGIN
    SELECT h.id, h.settle_transaction_id IS NOT NULL AND st.id IS NULL AS no_settle_transaction,
           st.kind NOT IN ('capture', 'void') OR (st.result ->> 'hold_id')::bigint IS DISTINCT FROM h.id
               AS not_its_settlement
        INTO bad
        FROM changed_holds h
        LEFT JOIN ledger_idempotency_keys sk ON sk.transaction_id = h.settle_transaction_id
        LEFT JOIN ledger_transactions st ON st.id = sk.transaction_id AND st.created_at = sk.created_at
        WHERE (h.settle_transaction_id IS NOT NULL
               AND (st.id IS NULL OR st.kind NOT IN ('capture', 'void')
                    OR (st.result ->> 'hold_id')::bigint IS DISTINCT FROM h.id))
           OR CASE WHEN cardinality(h.share_drawn) = 1
                   THEN h.share_returned[1] + h.share_refunded[1] > h.share_drawn[1]
                   ELSE EXISTS (
                       SELECT FROM unnest(h.share_drawn, h.share_returned, h.share_refunded)
                           AS share (drawn, returned, refunded)
                       WHERE share.returned + share.refunded > share.drawn)
              END
        LIMIT 1;
    IF FOUND THEN
        IF bad.no_settle_transaction THEN
            RAISE EXCEPTION 'hold % names a settle transaction which does not exist', bad.id
                USING ERRCODE = 'foreign_key_violation';
        END IF;
        IF bad.not_its_settlement THEN
            RAISE EXCEPTION 'hold % names a settle transaction which is not its capture or void', bad.id
                USING ERRCODE = 'foreign_key_violation';
        END IF;
        RAISE EXCEPTION 'shares of hold % give back and refund more than they drew', bad.id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

-- Webhook events of credits and refunds, as in 0011, reading postings in their partition; recreated on the
-- new table after the copy, so that the copied rows raise no events.
CREATE OR REPLACE FUNCTION webhook_ledger_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_events (user_id, type, data)
    SELECT n.user_id,
           CASE WHEN n.kind = 'refund' THEN 'generation.refunded' ELSE 'credit.granted' END,
           CASE WHEN n.kind = 'refund' THEN jsonb_build_object(
               'generation_id', substr(n.reference, 12), 'transaction_id', n.id, 'moments', amount.moments,
               'reason', n.reason)
           ELSE jsonb_build_object(
               'transaction_id', n.id, 'kind', n.kind, 'moments', amount.moments, 'reference', n.reference,
               'reason', n.reason)
           END
    FROM new_transactions n
    CROSS JOIN LATERAL (
        SELECT -sum(p.amount) AS moments FROM ledger_postings p
        WHERE p.transaction_id = n.id AND p.created_at = n.created_at AND p.amount < 0
    ) amount
    WHERE n.kind IN ('purchase', 'subscription_grant', 'grant', 'clawback_reversal')
       OR (n.kind = 'refund' AND n.reference LIKE 'generation:%')
    ORDER BY n.id;
    RETURN NULL;
END $$;
CREATE TRIGGER webhook_ledger_events AFTER INSERT ON ledger_transactions
    REFERENCING NEW TABLE AS new_transactions FOR EACH STATEMENT EXECUTE FUNCTION webhook_ledger_events();

ANALYZE ledger_transactions, ledger_postings, ledger_idempotency_keys;
