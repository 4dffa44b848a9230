-- The double-entry moment ledger. Money is bigint moments. Every rule written here is also checked in
-- Python (ledger/rules.py) before the write; this file is the second, independent line of defence.
--
-- How the database checks the rules, and why:
-- - References between the ledger's tables are checked by statement triggers, once per INSERT or UPDATE
--   over all its rows, not by foreign keys. A batch of a few hundred operations spent most of the
--   database's time in per-row work: one foreign-key query per reference per row. The guarantees are the
--   same because the rows others point at are never deleted and never change their keys (the no_delete,
--   append_only and keys_fixed triggers below), so a reference checked when a row is written stays valid.
-- - The check functions run with hash joins, merge joins, sequential scans and materialization off, so
--   that they keep to index probes: a batch names a few hundred rows of tables that only grow. With
--   statistics taken while a table was small (a new ledger, analyzed after its first few transactions)
--   the planner would read a whole table per statement, or copy it into memory once and scan that copy
--   for every row checked, which grows with the ledger until the next ANALYZE (a batch of 128 holds
--   compared 700,000 rows).
-- - Row guards on updates run AFTER the update, not BEFORE, with their conditions in the trigger's WHEN
--   clause. A BEFORE ROW trigger makes PostgreSQL lock each row first, one more log record per row, even
--   when its WHEN clause then finds nothing wrong. An AFTER trigger's WHEN clause is evaluated as the row
--   is written, and its exception undoes the statement all the same.
-- - Few indexes: B-tree inserts were the largest cost of a ledger operation. An index exists only where
--   something reads by it.

-- Append-only: what these triggers guard is never updated, deleted or truncated; corrections are new
-- transactions.
CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP USING ERRCODE = 'check_violation';
END $$;

-- Without foreign keys, the rows others point at must keep their keys. Called only when a keys_fixed
-- trigger's WHEN clause has found a key changed.
CREATE FUNCTION ledger_refuse_rekey() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% row % may not change its identity or origin', TG_TABLE_NAME, OLD
        USING ERRCODE = 'check_violation';
END $$;

-- Accounts: one row each, code unique. System accounts are created here; user accounts on first use.
CREATE TABLE ledger_accounts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code text NOT NULL UNIQUE,
    kind text NOT NULL CHECK (kind IN ('system', 'user_available', 'user_held', 'user_debt')),
    user_id text,
    CHECK ((kind = 'system') = (user_id IS NULL)),
    CHECK (kind <> 'system' OR code LIKE 'system:%'),
    CHECK (kind = 'system' OR code = 'user:' || user_id || ':' || substr(kind, 6))
);

INSERT INTO ledger_accounts (code, kind) VALUES
    ('system:sales', 'system'),
    ('system:subscription_grants', 'system'),
    ('system:promotions', 'system'),
    ('system:revenue', 'system'),
    ('system:expired', 'system'),
    ('system:clawback', 'system');

-- An account is never changed or removed: postings and balance rows name it.
CREATE TRIGGER ledger_accounts_no_delete BEFORE DELETE OR UPDATE ON ledger_accounts
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_accounts_no_truncate BEFORE TRUNCATE ON ledger_accounts
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

-- One row per user: the cached balances of the user's three accounts, locked (FOR UPDATE) by every
-- transaction that touches the user. System accounts have no cached balance: their balance is derived
-- from postings, so they are never a hot row (see README, "Design").
-- Pages filled to 50%: room on every page for the next version of a row, so that updating a balance
-- stays a heap-only (HOT) update that touches no index; a full page forces a new entry in every index.
CREATE TABLE ledger_balances (
    user_id text PRIMARY KEY CHECK (length(user_id) BETWEEN 1 AND 200),
    available_account_id bigint NOT NULL UNIQUE REFERENCES ledger_accounts (id),
    held_account_id bigint NOT NULL UNIQUE REFERENCES ledger_accounts (id),
    debt_account_id bigint NOT NULL UNIQUE REFERENCES ledger_accounts (id),
    available bigint NOT NULL DEFAULT 0 CHECK (available >= 0),
    held bigint NOT NULL DEFAULT 0 CHECK (held >= 0),
    -- Debt: what a clawback took beyond what was available. Only a clawback may create it (see
    -- ledger_postings_inserted).
    owed bigint NOT NULL DEFAULT 0 CHECK (owed >= 0),
    version bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 50);

-- Rows of the ledger's state (balance rows, lots, holds) are never removed: they are what the audit
-- compares the postings against, so deleting them would hide moments from it.
CREATE TRIGGER ledger_balances_no_delete BEFORE DELETE ON ledger_balances
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_balances_no_truncate BEFORE TRUNCATE ON ledger_balances
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
-- Lots and holds name the user's balance row, and the user's postings its accounts.
CREATE TRIGGER ledger_balances_keys_fixed AFTER UPDATE ON ledger_balances FOR EACH ROW
    WHEN (NEW.user_id <> OLD.user_id OR NEW.available_account_id <> OLD.available_account_id
          OR NEW.held_account_id <> OLD.held_account_id OR NEW.debt_account_id <> OLD.debt_account_id)
    EXECUTE FUNCTION ledger_refuse_rekey();

CREATE TABLE ledger_transactions (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN (
        'purchase', 'subscription_grant', 'grant', 'hold', 'capture', 'void', 'refund', 'expiry',
        'clawback', 'clawback_reversal'
    )),
    idempotency_key text NOT NULL UNIQUE CHECK (length(idempotency_key) BETWEEN 1 AND 400),
    -- SHA-256 of the operation's canonical form: the same key with another request is refused.
    request_hash bytea NOT NULL CHECK (length(request_hash) = 32),
    user_id text NOT NULL,
    reference text CHECK (length(reference) <= 400),
    -- Checked by ledger_transactions_inserted, once per statement, to be a transaction of the same user.
    -- A foreign key queued one trigger call per inserted transaction, nearly all for a NULL.
    reverses_transaction_id bigint,
    actor text NOT NULL CHECK (length(actor) BETWEEN 1 AND 400),
    reason text CHECK (length(reason) <= 1000),
    -- What the operation answered, replayed verbatim for a repeated idempotency key. json, not jsonb: the
    -- text as it was sent, since it is only read back whole (and for its hold_id by the holds' checks); as
    -- jsonb it took 238 of a hold's or capture's 368 bytes and was parsed on every insert.
    result json NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- The database transaction that wrote it: postings may only join a ledger transaction in the same
    -- one. No row may name another (ledger_transactions_inserted).
    written_by_xid xid8 NOT NULL DEFAULT pg_current_xact_id()
);
CREATE INDEX ledger_transactions_user ON ledger_transactions (user_id, id);
-- BRIN, not B-tree: created_at only grows with the table, and a BRIN index finds a time range from a few
-- pages of summaries, at almost no cost per insert.
CREATE INDEX ledger_transactions_created ON ledger_transactions USING brin (created_at) WITH (autosummarize = on);
CREATE INDEX ledger_transactions_reference ON ledger_transactions (reference) WHERE reference IS NOT NULL;

CREATE TRIGGER ledger_transactions_append_only BEFORE UPDATE OR DELETE ON ledger_transactions
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_transactions_no_truncate BEFORE TRUNCATE ON ledger_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

-- Each ledger transaction sums to zero over at least two postings, checked at commit (deferred). The
-- markers: every statement that inserts ledger transactions adds one row here naming them, and the
-- deferred constraint trigger is on this table, so the marker queues the check whoever writes it. The
-- check verifies exactly the transactions its marker names and removes the marker, so the table is
-- empty outside a database transaction. This queues one check per statement rather than one per ledger
-- transaction, and needs no index to find what a database transaction wrote. A rolled-back savepoint
-- takes its marker and its queued check together.
CREATE TABLE ledger_balance_checks (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_ids bigint[] NOT NULL
);

CREATE FUNCTION ledger_transaction_balanced() RETURNS trigger LANGUAGE plpgsql
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

-- Inserted ledger transactions name their own database transaction as writer, and reverse only an
-- existing transaction of the same user; then their marker queues the balance check.
CREATE FUNCTION ledger_transactions_inserted() RETURNS trigger LANGUAGE plpgsql
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
CREATE TRIGGER ledger_transactions_inserted AFTER INSERT ON ledger_transactions
    REFERENCING NEW TABLE AS new_transactions FOR EACH STATEMENT EXECUTE FUNCTION ledger_transactions_inserted();

-- No index by account: nothing reads postings by account except the audit, which reads them all.
CREATE TABLE ledger_postings (
    transaction_id bigint NOT NULL,
    account_id bigint NOT NULL,
    -- Signed: positive credits the account, negative debits it; a transaction's postings sum to zero.
    amount bigint NOT NULL CHECK (amount <> 0),
    PRIMARY KEY (transaction_id, account_id)
);

CREATE TRIGGER ledger_postings_append_only BEFORE UPDATE OR DELETE ON ledger_postings
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_postings_no_truncate BEFORE TRUNCATE ON ledger_postings
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

-- Postings name an existing transaction and an existing account; they join only a ledger transaction
-- written in the same database transaction (no appending to a committed one); and only a clawback may
-- debit a user's debt account (create debt). Each reference is probed once per distinct transaction and
-- account rather than once per posting (a batch's postings name each transaction twice, and few
-- accounts). min() rather than LIMIT 1 keeps the planner from betting on an early hit and scanning
-- whole tables.
CREATE FUNCTION ledger_postings_inserted() RETURNS trigger LANGUAGE plpgsql
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
CREATE TRIGGER ledger_postings_inserted AFTER INSERT ON ledger_postings
    REFERENCING NEW TABLE AS new_postings FOR EACH STATEMENT EXECUTE FUNCTION ledger_postings_inserted();

-- Lots: every credit to user:available, with its category, optional expiry and what is left of it.
CREATE TABLE ledger_lots (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    user_id text NOT NULL,
    category text NOT NULL CHECK (category IN ('paid', 'subscription', 'promotional')),
    amount bigint NOT NULL CHECK (amount > 0),
    remaining bigint NOT NULL CHECK (remaining >= 0),
    expires_at timestamptz,
    expired_at timestamptz,
    source_transaction_id bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK (remaining <= amount),
    CHECK (expired_at IS NULL OR remaining = 0)
);
CREATE INDEX ledger_lots_spendable ON ledger_lots (user_id) WHERE remaining > 0;
CREATE INDEX ledger_lots_expiring ON ledger_lots (expires_at) WHERE remaining > 0 AND expires_at IS NOT NULL;

CREATE TRIGGER ledger_lots_no_delete BEFORE DELETE ON ledger_lots
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_lots_no_truncate BEFORE TRUNCATE ON ledger_lots
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
-- Holds' shares name lots: a lot's id, owner, category, size and origin never change.
CREATE TRIGGER ledger_lots_keys_fixed AFTER UPDATE ON ledger_lots FOR EACH ROW
    WHEN (NEW.id <> OLD.id OR NEW.user_id <> OLD.user_id OR NEW.category <> OLD.category
          OR NEW.amount <> OLD.amount OR NEW.source_transaction_id <> OLD.source_transaction_id)
    EXECUTE FUNCTION ledger_refuse_rekey();

-- A lot names an existing balance row and a source transaction of the same user.
CREATE FUNCTION ledger_lots_references() RETURNS trigger LANGUAGE plpgsql
SET enable_hashjoin = off SET enable_mergejoin = off SET enable_seqscan = off SET enable_material = off AS $$
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

-- Holds: moments reserved for a generation in flight. Each ends exactly once.
--
-- No index on expiry or user: generations find their expired holds through the generation rows, and the
-- audit reads every hold anyway. No unique index on hold_transaction_id or settle_transaction_id either:
-- settling a hold sets settle_transaction_id, and updating an indexed column puts the row's new version
-- on another page with new entries in every index (and logs the row twice). That a ledger transaction
-- creates or settles one hold only is checked from the transaction's side instead: it must be of the
-- right kind and name the hold in its recorded result, which never changes (ledger_holds_references,
-- ledger_holds_settled).
-- Pages filled to 40%: room for the settled version of every hold on the page (about 270 bytes each), so
-- that settling a hold is a heap-only (HOT) update that writes no index entry.
CREATE TABLE ledger_holds (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    user_id text NOT NULL,
    amount bigint NOT NULL CHECK (amount > 0),
    status text NOT NULL CHECK (status IN ('open', 'captured', 'voided', 'expired')),
    captured bigint NOT NULL DEFAULT 0 CHECK (captured >= 0),
    refunded bigint NOT NULL DEFAULT 0 CHECK (refunded >= 0),
    expires_at timestamptz NOT NULL,
    reference text,
    hold_transaction_id bigint NOT NULL,
    settle_transaction_id bigint,
    created_at timestamptz NOT NULL DEFAULT now(),
    settled_at timestamptz,
    -- The hold's shares: which lots it drew from, in draw order (moments go back in the reverse order),
    -- and what became of each share, as four arrays of one length. In the hold's own row rather than one
    -- row per lot in a table of their own, which were inserted with the hold and rewritten with it.
    share_lot_ids bigint[] NOT NULL,
    share_drawn bigint[] NOT NULL,
    share_returned bigint[] NOT NULL,
    share_refunded bigint[] NOT NULL,
    CHECK (captured <= amount),
    CHECK (refunded <= captured),
    CHECK ((status = 'open') = (settle_transaction_id IS NULL)),
    CHECK ((status = 'open') = (settled_at IS NULL)),
    CHECK (status = 'captured' OR captured = 0),
    -- array_position(..., NULL) finds a NULL element, which would make the ALL() tests NULL and so pass.
    CONSTRAINT ledger_holds_shares_check CHECK (
        array_ndims(share_lot_ids) = 1 AND array_ndims(share_drawn) = 1 AND array_ndims(share_returned) = 1
        AND array_ndims(share_refunded) = 1 AND cardinality(share_lot_ids) >= 1
        AND cardinality(share_drawn) = cardinality(share_lot_ids)
        AND cardinality(share_returned) = cardinality(share_lot_ids)
        AND cardinality(share_refunded) = cardinality(share_lot_ids)
        AND array_position(share_lot_ids, NULL) IS NULL AND array_position(share_drawn, NULL) IS NULL
        AND array_position(share_returned, NULL) IS NULL AND array_position(share_refunded, NULL) IS NULL
        AND 0 < ALL (share_drawn) AND 0 <= ALL (share_returned) AND 0 <= ALL (share_refunded)
    )
) WITH (fillfactor = 40);

CREATE TRIGGER ledger_holds_no_delete BEFORE DELETE ON ledger_holds
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_holds_no_truncate BEFORE TRUNCATE ON ledger_holds
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
-- Generations name holds: a hold's id never changes.
CREATE TRIGGER ledger_holds_keys_fixed AFTER UPDATE ON ledger_holds FOR EACH ROW
    WHEN (NEW.id <> OLD.id) EXECUTE FUNCTION ledger_refuse_rekey();

-- A hold ends once (an ended hold never changes status again), its captured and refunded amounts only
-- grow, and its user, amount, hold transaction, settlement once set and what each share drew from which
-- lot never change. The conditions sit in the trigger's WHEN clause, evaluated without a function call;
-- the function runs only when one has found a forbidden change, to say which.
CREATE FUNCTION ledger_holds_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status <> 'open' AND NEW.status IS DISTINCT FROM OLD.status THEN
        RAISE EXCEPTION 'hold % already ended as %', OLD.id, OLD.status USING ERRCODE = 'check_violation';
    END IF;
    RAISE EXCEPTION 'hold % may not be rewritten', OLD.id USING ERRCODE = 'check_violation';
END $$;
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

-- An inserted hold names its user's balance row and a hold transaction of this user that is a hold of
-- this very hold (its recorded result names it), so one ledger transaction creates one hold only; a
-- settlement, if any, is a capture or void of this hold. Each share names a lot of the same user, once,
-- and gives back and refunds no more than it drew; the shares drew the hold's amount.
CREATE FUNCTION ledger_holds_references() RETURNS trigger LANGUAGE plpgsql
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
CREATE TRIGGER ledger_holds_inserted AFTER INSERT ON ledger_holds
    REFERENCING NEW TABLE AS changed_holds FOR EACH STATEMENT EXECUTE FUNCTION ledger_holds_references();

-- After an UPDATE only what an update may change is checked: the settle transaction (it exists and is a
-- capture or void of this hold) and what the shares gave back and refunded. Everything else was checked
-- on INSERT and the guard keeps it fixed; re-checking it all made settling a hold cost about twice as
-- much as creating one. One-share holds are checked without unnesting.
CREATE FUNCTION ledger_holds_settled() RETURNS trigger LANGUAGE plpgsql
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
CREATE TRIGGER ledger_holds_updated AFTER UPDATE ON ledger_holds
    REFERENCING NEW TABLE AS changed_holds FOR EACH STATEMENT EXECUTE FUNCTION ledger_holds_settled();
