-- Finance (entitlements/finance): exports of the ledger in commit order and closed periods.

-- One export: what was asked, its state, and once done its manifest (what the file holds, where in commit
-- order it starts and ends, its row count and SHA-256). A process claims an export by setting `lease_until`;
-- an export whose process died is claimed again once its lease has run out.
CREATE TABLE finance_exports (
    id uuid PRIMARY KEY,
    dataset text NOT NULL CHECK (dataset IN ('transactions', 'postings')),
    format text NOT NULL CHECK (format IN ('csv', 'ndjson')),
    after_position text,
    since timestamptz,
    until timestamptz,
    status text NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
    requested_by text NOT NULL,
    manifest jsonb,
    error text,
    lease_until timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    CHECK ((status = 'done') = (manifest IS NOT NULL)),
    CHECK (status <> 'failed' OR error IS NOT NULL)
);
CREATE INDEX finance_exports_newest ON finance_exports (created_at DESC, id DESC);
CREATE INDEX finance_exports_unfinished ON finance_exports (lease_until) WHERE status IN ('pending', 'running');

-- A closed period: its roll-forward as it was computed when closed, frozen. Never updated or removed: a
-- correction lands in a later period, as the append-only ledger implies.
CREATE TABLE finance_periods (
    period text PRIMARY KEY CHECK (period ~ '^[0-9]{4}-(0[1-9]|1[0-2])$'),
    since timestamptz NOT NULL,
    until timestamptz NOT NULL,
    report jsonb NOT NULL,
    seal_head text,
    closed_by text NOT NULL,
    closed_at timestamptz NOT NULL DEFAULT now(),
    CHECK (since < until)
);
CREATE TRIGGER finance_periods_frozen BEFORE UPDATE OR DELETE ON finance_periods
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER finance_periods_no_truncate BEFORE TRUNCATE ON finance_periods
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
