-- The ledger's state tables check their references set-based, once per statement, the balance of ledger
-- transactions is checked once per database transaction instead of once per ledger transaction, and a
-- hold's shares live in the hold's own row.
--
-- Why: a batch of a few hundred operations spent most of the database's time in per-row work, one
-- foreign-key query per reference per row, one trigger call per ledger transaction at commit, and one
-- share row per lot a hold drew from, inserted with the hold and rewritten with it. The same guarantees
-- hold: rows of balances, transactions, lots and holds are never deleted (migrations 0002 and 0005), so a
-- reference checked when a row is written stays valid for good.

ALTER TABLE ledger_lots
    DROP CONSTRAINT ledger_lots_user_id_fkey,
    DROP CONSTRAINT ledger_lots_source_transaction_id_fkey;
ALTER TABLE ledger_holds
    DROP CONSTRAINT ledger_holds_user_id_fkey,
    DROP CONSTRAINT ledger_holds_hold_transaction_id_fkey,
    DROP CONSTRAINT ledger_holds_settle_transaction_id_fkey;

-- A hold's shares: which lots it drew from, in draw order (moments go back in the reverse order), and
-- what became of each share, as four arrays of one length.
ALTER TABLE ledger_holds
    ADD COLUMN share_lot_ids bigint[],
    ADD COLUMN share_drawn bigint[],
    ADD COLUMN share_returned bigint[],
    ADD COLUMN share_refunded bigint[];
UPDATE ledger_holds AS hold
SET share_lot_ids = shares.lot_ids, share_drawn = shares.drawn, share_returned = shares.returned,
    share_refunded = shares.refunded
FROM (
    SELECT hold_id,
           array_agg(lot_id ORDER BY draw_order) AS lot_ids,
           array_agg(drawn ORDER BY draw_order) AS drawn,
           array_agg(returned ORDER BY draw_order) AS returned,
           array_agg(refunded ORDER BY draw_order) AS refunded
    FROM ledger_hold_lots GROUP BY hold_id
) AS shares
WHERE shares.hold_id = hold.id;
ALTER TABLE ledger_holds
    ALTER share_lot_ids SET NOT NULL,
    ALTER share_drawn SET NOT NULL,
    ALTER share_returned SET NOT NULL,
    ALTER share_refunded SET NOT NULL,
    -- array_position(..., NULL) finds a NULL element, which would make the ALL() tests NULL and so pass.
    ADD CONSTRAINT ledger_holds_shares_check CHECK (
        array_ndims(share_lot_ids) = 1 AND array_ndims(share_drawn) = 1 AND array_ndims(share_returned) = 1
        AND array_ndims(share_refunded) = 1 AND cardinality(share_lot_ids) >= 1
        AND cardinality(share_drawn) = cardinality(share_lot_ids)
        AND cardinality(share_returned) = cardinality(share_lot_ids)
        AND cardinality(share_refunded) = cardinality(share_lot_ids)
        AND array_position(share_lot_ids, NULL) IS NULL AND array_position(share_drawn, NULL) IS NULL
        AND array_position(share_returned, NULL) IS NULL AND array_position(share_refunded, NULL) IS NULL
        AND 0 < ALL (share_drawn) AND 0 <= ALL (share_returned) AND 0 <= ALL (share_refunded)
    );
DROP TABLE ledger_hold_lots;

-- A hold ends once, its amounts only grow, and what it drew from which lots never changes.
CREATE OR REPLACE FUNCTION ledger_holds_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status <> 'open' AND NEW.status <> OLD.status THEN
        RAISE EXCEPTION 'hold % already ended as %', OLD.id, OLD.status USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.amount <> OLD.amount OR NEW.user_id <> OLD.user_id
       OR NEW.hold_transaction_id <> OLD.hold_transaction_id
       OR NEW.captured < OLD.captured OR NEW.refunded < OLD.refunded
       OR (OLD.settle_transaction_id IS NOT NULL AND NEW.settle_transaction_id <> OLD.settle_transaction_id)
       OR NEW.share_lot_ids <> OLD.share_lot_ids OR NEW.share_drawn <> OLD.share_drawn THEN
        RAISE EXCEPTION 'hold % may not be rewritten', OLD.id USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

-- Index probes only: a batch names a few hundred rows of tables that only grow, and a hash join or a
-- sequential scan, which the planner may pick when the tables' statistics are stale, would read a whole
-- table per statement.
CREATE FUNCTION ledger_lots_references() RETURNS trigger LANGUAGE plpgsql
SET enable_hashjoin = off SET enable_mergejoin = off SET enable_seqscan = off AS $$
DECLARE
    bad record;
BEGIN
    SELECT l.id, b.user_id IS NULL AS no_user, t.id IS NULL AS no_transaction,
           t.user_id IS DISTINCT FROM l.user_id AS other_user
        INTO bad
        FROM changed_lots l
        LEFT JOIN ledger_balances b ON b.user_id = l.user_id
        LEFT JOIN ledger_transactions t ON t.id = l.source_transaction_id
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
CREATE TRIGGER ledger_lots_inserted AFTER INSERT ON ledger_lots
    REFERENCING NEW TABLE AS changed_lots FOR EACH STATEMENT EXECUTE FUNCTION ledger_lots_references();

-- A hold names its user and transactions, and each share a lot of the same user, once, giving back and
-- refunding no more than it drew; the shares drew the hold's amount.
CREATE FUNCTION ledger_holds_references() RETURNS trigger LANGUAGE plpgsql
SET enable_hashjoin = off SET enable_mergejoin = off SET enable_seqscan = off AS $$
DECLARE
    bad record;
BEGIN
    SELECT h.id, b.user_id IS NULL AS no_user, ht.id IS NULL AS no_hold_transaction
        INTO bad
        FROM changed_holds h
        LEFT JOIN ledger_balances b ON b.user_id = h.user_id
        LEFT JOIN ledger_transactions ht ON ht.id = h.hold_transaction_id
        LEFT JOIN ledger_transactions st ON st.id = h.settle_transaction_id
        WHERE b.user_id IS NULL OR ht.id IS NULL OR (h.settle_transaction_id IS NOT NULL AND st.id IS NULL)
        LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'hold % names a %', bad.id,
            CASE WHEN bad.no_user THEN 'user with no balance row'
                 WHEN bad.no_hold_transaction THEN 'hold transaction which does not exist'
                 ELSE 'settle transaction which does not exist' END
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
    SELECT h.id, s.drawn_total, s.overdrawn, s.lots, s.distinct_lots
        INTO bad
        FROM changed_holds h
        CROSS JOIN LATERAL (
            SELECT sum(drawn) AS drawn_total, bool_or(returned + refunded > drawn) AS overdrawn,
                   count(*) AS lots, count(DISTINCT lot_id) AS distinct_lots
            FROM unnest(h.share_lot_ids, h.share_drawn, h.share_returned, h.share_refunded)
                AS share (lot_id, drawn, returned, refunded)
        ) AS s
        WHERE s.drawn_total <> h.amount OR s.overdrawn OR s.lots <> s.distinct_lots
        LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'shares of hold % %', bad.id,
            CASE WHEN bad.overdrawn THEN 'give back and refund more than they drew'
                 WHEN bad.lots <> bad.distinct_lots THEN 'name a lot twice'
                 ELSE format('drew %s, not the hold''s amount', bad.drawn_total) END
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER ledger_holds_inserted AFTER INSERT ON ledger_holds
    REFERENCING NEW TABLE AS changed_holds FOR EACH STATEMENT EXECUTE FUNCTION ledger_holds_references();
CREATE TRIGGER ledger_holds_updated AFTER UPDATE ON ledger_holds
    REFERENCING NEW TABLE AS changed_holds FOR EACH STATEMENT EXECUTE FUNCTION ledger_holds_references();

-- The postings' checks of migration 0006 in one statement, with the same plan discipline.
CREATE OR REPLACE FUNCTION ledger_postings_inserted() RETURNS trigger LANGUAGE plpgsql
SET enable_hashjoin = off SET enable_mergejoin = off SET enable_seqscan = off AS $$
DECLARE
    found_row record;
BEGIN
    SELECT min(p.transaction_id) FILTER (WHERE t.id IS NULL) AS missing,
           min(p.transaction_id) FILTER (WHERE t.written_by_xid <> pg_current_xact_id()) AS committed,
           min(p.account_id) FILTER (WHERE a.id IS NULL) AS no_account,
           min(p.transaction_id) FILTER (WHERE a.kind = 'user_debt' AND p.amount < 0 AND t.kind <> 'clawback')
               AS debt
        INTO found_row
        FROM new_postings p
        LEFT JOIN ledger_transactions t ON t.id = p.transaction_id
        LEFT JOIN ledger_accounts a ON a.id = p.account_id;
    IF found_row.missing IS NOT NULL THEN
        RAISE EXCEPTION 'postings for ledger transaction % which does not exist', found_row.missing
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF found_row.committed IS NOT NULL THEN
        RAISE EXCEPTION 'ledger transaction % is committed: postings may not be added', found_row.committed
            USING ERRCODE = 'check_violation';
    END IF;
    IF found_row.no_account IS NOT NULL THEN
        RAISE EXCEPTION 'posting to account % which does not exist', found_row.no_account
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF found_row.debt IS NOT NULL THEN
        RAISE EXCEPTION 'ledger transaction % creates debt but is not a clawback', found_row.debt
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

-- Balance: still a deferred constraint trigger, but queued once per database transaction, and that one
-- check covers every ledger transaction the database transaction wrote (found by written_by_xid, which
-- no row may set to another transaction). The first INSERT of ledger transactions records a marker row
-- for the database transaction; the constraint trigger is on the marker table, so a marker queues the
-- check whoever writes it. The check removes the marker, so after a check fired early (SET CONSTRAINTS
-- ... IMMEDIATE) the next ledger transaction queues another; a rolled-back savepoint takes its marker and
-- its queued check together.
CREATE INDEX ledger_transactions_written_by ON ledger_transactions (written_by_xid);
CREATE TABLE ledger_balance_checks (xid xid8 PRIMARY KEY);

CREATE FUNCTION ledger_transactions_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    foreign_id bigint;
BEGIN
    SELECT id INTO foreign_id FROM new_transactions WHERE written_by_xid <> pg_current_xact_id() LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ledger transaction % names another database transaction as its writer', foreign_id
            USING ERRCODE = 'check_violation';
    END IF;
    INSERT INTO ledger_balance_checks VALUES (pg_current_xact_id()) ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;
CREATE TRIGGER ledger_transactions_inserted AFTER INSERT ON ledger_transactions
    REFERENCING NEW TABLE AS new_transactions FOR EACH STATEMENT EXECUTE FUNCTION ledger_transactions_inserted();

CREATE OR REPLACE FUNCTION ledger_transaction_balanced() RETURNS trigger LANGUAGE plpgsql
SET enable_hashjoin = off SET enable_mergejoin = off SET enable_seqscan = off AS $$
DECLARE
    bad record;
BEGIN
    -- Materialized first: given ORDER BY id LIMIT 1 over the whole table, the planner walks the primary
    -- key from the start hoping for an early match, reading every ledger transaction ever written.
    WITH written AS MATERIALIZED (
        SELECT id FROM ledger_transactions WHERE written_by_xid = pg_current_xact_id()
    )
    SELECT t.id, coalesce(s.legs, 0) AS legs, coalesce(s.total, 0) AS total
        INTO bad
        FROM written t
        LEFT JOIN LATERAL (
            SELECT count(*) AS legs, sum(p.amount) AS total FROM ledger_postings p WHERE p.transaction_id = t.id
        ) s ON true
        WHERE coalesce(s.legs, 0) < 2 OR s.total <> 0
        ORDER BY t.id
        LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ledger transaction % is unbalanced: % postings summing to %', bad.id, bad.legs, bad.total
            USING ERRCODE = 'check_violation';
    END IF;
    DELETE FROM ledger_balance_checks WHERE xid = pg_current_xact_id();
    RETURN NULL;
END $$;

DROP TRIGGER ledger_transactions_balanced ON ledger_transactions;
CREATE CONSTRAINT TRIGGER ledger_transactions_balanced AFTER INSERT ON ledger_balance_checks
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_transaction_balanced();

-- With row-by-row foreign keys gone, the rows others point at keep their keys: a lot's id, owner,
-- origin and size, a hold's id, a balance row's user and accounts never change.
CREATE FUNCTION ledger_refuse_rekey() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% row % may not change its identity or origin', TG_TABLE_NAME, OLD
        USING ERRCODE = 'check_violation';
END $$;
CREATE TRIGGER ledger_lots_keys_fixed BEFORE UPDATE ON ledger_lots FOR EACH ROW
    WHEN (NEW.id <> OLD.id OR NEW.user_id <> OLD.user_id OR NEW.category <> OLD.category
          OR NEW.amount <> OLD.amount OR NEW.source_transaction_id <> OLD.source_transaction_id)
    EXECUTE FUNCTION ledger_refuse_rekey();
CREATE TRIGGER ledger_holds_keys_fixed BEFORE UPDATE ON ledger_holds FOR EACH ROW
    WHEN (NEW.id <> OLD.id) EXECUTE FUNCTION ledger_refuse_rekey();
CREATE TRIGGER ledger_balances_keys_fixed BEFORE UPDATE ON ledger_balances FOR EACH ROW
    WHEN (NEW.user_id <> OLD.user_id OR NEW.available_account_id <> OLD.available_account_id
          OR NEW.held_account_id <> OLD.held_account_id OR NEW.debt_account_id <> OLD.debt_account_id)
    EXECUTE FUNCTION ledger_refuse_rekey();
-- Room on every page for the next version of a row, so that updating a balance stays a heap-only (HOT)
-- update that touches no index; a full page forces a new index entry in every index.
ALTER TABLE ledger_balances SET (fillfactor = 50);
ALTER TABLE ledger_holds SET (fillfactor = 80);
-- Nothing reads holds by these: generations find their expired holds through the generation rows, and
-- the audit reads every hold anyway. Each cost two index entries per hold.
DROP INDEX ledger_holds_open_expiry;
DROP INDEX ledger_holds_user;
