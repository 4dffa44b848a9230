-- The postings checks, set-based and planned per statement. Row-by-row foreign keys on ledger_postings
-- cost a third of the database's time per ledger operation; the same guarantees (every posting names an
-- existing transaction of this database transaction and an existing account) are checked here once per
-- INSERT statement over all its rows. Accounts, transactions and their rows are never deleted (triggers),
-- so a check at insert time holds forever. EXECUTE plans each query with the ledger's current size;
-- min() rather than LIMIT 1 keeps the planner from betting on an early hit and scanning whole tables.
ALTER TABLE ledger_postings DROP CONSTRAINT ledger_postings_transaction_id_fkey;
ALTER TABLE ledger_postings DROP CONSTRAINT ledger_postings_account_id_fkey;

CREATE OR REPLACE FUNCTION ledger_postings_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    offending bigint;
    missing bigint;
BEGIN
    EXECUTE 'SELECT min(p.transaction_id) FILTER (WHERE t.id IS NULL),
                    min(p.transaction_id) FILTER (WHERE t.written_by_xid <> pg_current_xact_id())
             FROM new_postings p LEFT JOIN ledger_transactions t ON t.id = p.transaction_id'
        INTO missing, offending;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'postings for ledger transaction % which does not exist', missing
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF offending IS NOT NULL THEN
        RAISE EXCEPTION 'ledger transaction % is committed: postings may not be added', offending
            USING ERRCODE = 'check_violation';
    END IF;
    EXECUTE 'SELECT min(p.account_id) FROM new_postings p
             LEFT JOIN ledger_accounts a ON a.id = p.account_id WHERE a.id IS NULL' INTO offending;
    IF offending IS NOT NULL THEN
        RAISE EXCEPTION 'posting to account % which does not exist', offending
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    EXECUTE 'SELECT min(p.transaction_id) FROM new_postings p
             JOIN ledger_accounts a ON a.id = p.account_id
             JOIN ledger_transactions t ON t.id = p.transaction_id
             WHERE a.kind = ''user_debt'' AND p.amount < 0 AND t.kind <> ''clawback''' INTO offending;
    IF offending IS NOT NULL THEN
        RAISE EXCEPTION 'ledger transaction % creates debt but is not a clawback', offending
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
