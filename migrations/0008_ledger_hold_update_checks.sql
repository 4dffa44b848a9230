-- Settling a batch of holds checks only what an UPDATE can change, and the set-based checks keep to
-- index probes however stale the statistics.
--
-- Why: settling holds (a capture, a void, a refund) cost about twice as much as creating them. The
-- statement check after an UPDATE re-verified every reference and every share from scratch, and the
-- row guard ran a PL/pgSQL function per row only to find nothing wrong. The guarantees stay the same:
-- the guard's conditions now sit in the trigger's WHEN clause, evaluated without a function call, and
-- everything the guard keeps fixed (user, amount, hold transaction, which lots each share drew from and
-- how much) cannot have changed since the INSERT check verified it, so after an UPDATE only the settle
-- transaction and what the shares gave back and refunded are checked.

DROP TRIGGER ledger_holds_guard ON ledger_holds;

-- Called only when the WHEN clause below has found a forbidden change: it says which.
CREATE OR REPLACE FUNCTION ledger_holds_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status <> 'open' AND NEW.status IS DISTINCT FROM OLD.status THEN
        RAISE EXCEPTION 'hold % already ended as %', OLD.id, OLD.status USING ERRCODE = 'check_violation';
    END IF;
    RAISE EXCEPTION 'hold % may not be rewritten', OLD.id USING ERRCODE = 'check_violation';
END $$;

CREATE TRIGGER ledger_holds_guard BEFORE UPDATE ON ledger_holds FOR EACH ROW
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

CREATE FUNCTION ledger_holds_settled() RETURNS trigger LANGUAGE plpgsql
SET enable_hashjoin = off SET enable_mergejoin = off SET enable_seqscan = off SET enable_material = off AS $$
DECLARE
    bad record;
BEGIN
    SELECT h.id, h.settle_transaction_id IS NOT NULL AND st.id IS NULL AS no_settle_transaction
        INTO bad
        FROM changed_holds h
        LEFT JOIN ledger_transactions st ON st.id = h.settle_transaction_id
        WHERE (h.settle_transaction_id IS NOT NULL AND st.id IS NULL)
           OR EXISTS (
               SELECT FROM unnest(h.share_drawn, h.share_returned, h.share_refunded)
                   AS share (drawn, returned, refunded)
               WHERE share.returned + share.refunded > share.drawn
           )
        LIMIT 1;
    IF FOUND THEN
        IF bad.no_settle_transaction THEN
            RAISE EXCEPTION 'hold % names a settle transaction which does not exist', bad.id
                USING ERRCODE = 'foreign_key_violation';
        END IF;
        RAISE EXCEPTION 'shares of hold % give back and refund more than they drew', bad.id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER ledger_holds_updated ON ledger_holds;
CREATE TRIGGER ledger_holds_updated AFTER UPDATE ON ledger_holds
    REFERENCING NEW TABLE AS changed_holds FOR EACH STATEMENT EXECUTE FUNCTION ledger_holds_settled();

-- The checks' plan discipline (index probes only, migration 0007) also needs materialization off:
-- statistics taken while a table was small (a new ledger, analyzed after its first few transactions)
-- let the planner read the whole table once into memory and scan that copy for every row checked,
-- which grows with the ledger until the next ANALYZE (a batch of 128 holds compared 700,000 rows).
ALTER FUNCTION ledger_lots_references() SET enable_material = off;
ALTER FUNCTION ledger_holds_references() SET enable_material = off;
ALTER FUNCTION ledger_postings_inserted() SET enable_material = off;
ALTER FUNCTION ledger_transaction_balanced() SET enable_material = off;
