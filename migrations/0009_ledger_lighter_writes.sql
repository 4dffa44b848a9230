-- A ledger operation writes less: fewer index entries, a smaller transaction row, no row lock before an
-- update. The guarantees stay the same.
--
-- Why: an operation (a hold or a capture) wrote about 1,800 bytes of write-ahead log (measured with
-- pg_waldump), and PostgreSQL's largest costs were B-tree inserts, 12 per operation, and copying the log.
-- - ledger_postings_account: nothing reads postings by account except the audit, which reads them all;
--   two entries per operation.
-- - ledger_transactions_written_by: served only the commit-time balance check, to find the ledger
--   transactions its database transaction wrote. The statement that inserts them now hands their ids to
--   the check itself, in the marker row that queues it.
-- - ledger_transactions_created: a B-tree on a column that only grows with the table. A BRIN index finds
--   a time range from a few pages of summaries, at almost no cost per insert.
-- - ledger_holds' unique indexes on hold_transaction_id and settle_transaction_id: settling a hold set an
--   indexed column, so PostgreSQL wrote the hold's new version on another page with new entries in all
--   three of its indexes (and logged the row twice). What they guaranteed, that a ledger transaction
--   creates or settles one hold only, the statement checks now guarantee from the transaction's side:
--   the transaction must be of the right kind and must name the hold in its recorded result, which can
--   never change. With room left on each page (fillfactor), settling a hold is a heap-only update.
-- - The row guards on balances, lots and holds run AFTER the update instead of BEFORE it: a BEFORE ROW
--   trigger makes PostgreSQL lock each row first, one more log record per row, even when its WHEN clause
--   then finds nothing wrong. An AFTER trigger's WHEN clause is evaluated as the row is written, and its
--   exception undoes the statement all the same.
-- - The foreign key of reverses_transaction_id queued one trigger call per inserted transaction, nearly
--   all for a NULL; the statement check below does it once per statement, as migration 0007 did for the
--   other references. Ledger transactions are never deleted, so a reference checked once stays valid.
-- - A transaction's recorded result is stored as the JSON text it was sent as: as jsonb it took 238 of a
--   hold's or capture's 368 bytes and was parsed on every insert, only to be read back whole for a replay.
ALTER TABLE ledger_transactions ALTER COLUMN result TYPE json USING result::json;

DROP INDEX ledger_postings_account;
DROP INDEX ledger_transactions_written_by;
DROP INDEX ledger_transactions_created;
CREATE INDEX ledger_transactions_created ON ledger_transactions USING brin (created_at) WITH (autosummarize = on);
-- Pages filled to 40%: room for the settled version of every hold on the page (about 270 bytes each).
ALTER TABLE ledger_holds SET (fillfactor = 40);
ALTER TABLE ledger_holds
    DROP CONSTRAINT ledger_holds_hold_transaction_id_key,
    DROP CONSTRAINT ledger_holds_settle_transaction_id_key;
ALTER TABLE ledger_transactions DROP CONSTRAINT ledger_transactions_reverses_transaction_id_fkey;

DROP TRIGGER ledger_lots_keys_fixed ON ledger_lots;
CREATE TRIGGER ledger_lots_keys_fixed AFTER UPDATE ON ledger_lots FOR EACH ROW
    WHEN (NEW.id <> OLD.id OR NEW.user_id <> OLD.user_id OR NEW.category <> OLD.category
          OR NEW.amount <> OLD.amount OR NEW.source_transaction_id <> OLD.source_transaction_id)
    EXECUTE FUNCTION ledger_refuse_rekey();
DROP TRIGGER ledger_holds_keys_fixed ON ledger_holds;
CREATE TRIGGER ledger_holds_keys_fixed AFTER UPDATE ON ledger_holds FOR EACH ROW
    WHEN (NEW.id <> OLD.id) EXECUTE FUNCTION ledger_refuse_rekey();
DROP TRIGGER ledger_balances_keys_fixed ON ledger_balances;
CREATE TRIGGER ledger_balances_keys_fixed AFTER UPDATE ON ledger_balances FOR EACH ROW
    WHEN (NEW.user_id <> OLD.user_id OR NEW.available_account_id <> OLD.available_account_id
          OR NEW.held_account_id <> OLD.held_account_id OR NEW.debt_account_id <> OLD.debt_account_id)
    EXECUTE FUNCTION ledger_refuse_rekey();
DROP TRIGGER ledger_holds_guard ON ledger_holds;
CREATE TRIGGER ledger_holds_guard AFTER UPDATE ON ledger_holds FOR EACH ROW
    WHEN ((OLD.status <> 'open' AND NEW.status IS DISTINCT FROM OLD.status)
          OR NEW.amount IS DISTINCT FROM OLD.amount
          OR NEW.user_id IS DISTINCT FROM OLD.user_id
          OR NEW.hold_transaction_id IS DISTINCT FROM OLD.hold_transaction_id
          OR NEW.captured < OLD.captured OR NEW.refunded < OLD.refunded
          OR (OLD.settle_transaction_id IS NOT NULL
              AND NEW.settle_transaction_id IS DISTINCT FROM OLD.settle_transaction_id)
          OR NEW.share_lot_ids IS DISTINCT FROM OLD.share_lot_ids
          OR NEW.share_drawn IS DISTINCT FROM OLD.share_drawn)
    EXECUTE FUNCTION ledger_holds_guard();

-- One marker per statement that inserts ledger transactions, naming them; its row queues the deferred
-- balance check, which checks exactly those and removes the marker. Empty outside a database transaction.
DROP TABLE ledger_balance_checks;
CREATE TABLE ledger_balance_checks (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_ids bigint[] NOT NULL
);

CREATE OR REPLACE FUNCTION ledger_transactions_inserted() RETURNS trigger LANGUAGE plpgsql
SET enable_hashjoin = off SET enable_mergejoin = off SET enable_seqscan = off SET enable_material = off AS $$
DECLARE
    bad record;
BEGIN
    SELECT n.id, n.written_by_xid <> pg_current_xact_id() AS foreign_writer, r.id IS NULL AS no_reversed
        INTO bad
        FROM new_transactions n
        LEFT JOIN ledger_transactions r ON r.id = n.reverses_transaction_id
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
    INSERT INTO ledger_balance_checks (transaction_ids) SELECT array_agg(id) FROM new_transactions HAVING count(*) > 0;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION ledger_transaction_balanced() RETURNS trigger LANGUAGE plpgsql
SET enable_hashjoin = off SET enable_mergejoin = off SET enable_seqscan = off SET enable_material = off AS $$
DECLARE
    bad record;
BEGIN
    -- The row as inserted: a deferred trigger reads the version its event names, whatever came after.
    SELECT t.id, coalesce(s.legs, 0) AS legs, coalesce(s.total, 0) AS total
        INTO bad
        FROM unnest(NEW.transaction_ids) AS t (id)
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
    DELETE FROM ledger_balance_checks WHERE id = NEW.id;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER ledger_transactions_balanced AFTER INSERT ON ledger_balance_checks
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_transaction_balanced();

-- A hold names its user, a hold transaction that names it, each share a lot of the same user, once,
-- giving back and refunding no more than it drew; the shares drew the hold's amount. As in 0007, but the
-- hold transaction must be a hold of this hold (its recorded result names it): one hold per transaction.
CREATE OR REPLACE FUNCTION ledger_holds_references() RETURNS trigger LANGUAGE plpgsql
SET enable_hashjoin = off SET enable_mergejoin = off SET enable_seqscan = off SET enable_material = off AS $$
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
    -- Most holds draw from one lot: their shares are checked without aggregating (a count(DISTINCT)
    -- sorts, once per hold). The details of a refusal are worked out for the hold refused only.
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

-- After an UPDATE (0008), the settle transaction must also be a capture or void of this hold; one-share
-- holds are checked without unnesting.
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
        LEFT JOIN ledger_transactions st ON st.id = h.settle_transaction_id
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

-- The postings' checks of 0007, each reference probed once per distinct transaction and account rather
-- than once per posting (a batch's postings name each transaction twice, and few accounts).
CREATE OR REPLACE FUNCTION ledger_postings_inserted() RETURNS trigger LANGUAGE plpgsql
SET enable_hashjoin = off SET enable_mergejoin = off SET enable_seqscan = off SET enable_material = off AS $$
DECLARE
    found_row record;
    debt_accounts bigint[];
BEGIN
    SELECT min(p.transaction_id) FILTER (WHERE t.id IS NULL) AS missing,
           min(p.transaction_id) FILTER (WHERE t.written_by_xid <> pg_current_xact_id()) AS committed
        INTO found_row
        FROM (SELECT DISTINCT transaction_id FROM new_postings) p
        LEFT JOIN ledger_transactions t ON t.id = p.transaction_id;
    IF found_row.missing IS NOT NULL THEN
        RAISE EXCEPTION 'postings for ledger transaction % which does not exist', found_row.missing
            USING ERRCODE = 'foreign_key_violation';
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
            JOIN ledger_transactions t ON t.id = p.transaction_id
            WHERE p.account_id = ANY (debt_accounts) AND p.amount < 0 AND t.kind <> 'clawback';
        IF found_row.debt IS NOT NULL THEN
            RAISE EXCEPTION 'ledger transaction % creates debt but is not a clawback', found_row.debt
                USING ERRCODE = 'check_violation';
        END IF;
    END IF;
    RETURN NULL;
END $$;
