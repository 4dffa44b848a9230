-- Abuse limits (docs/operations.md, "Abuse limits").

-- Each user's count of open holds, beside the balances it is checked with: a hold is refused once the
-- user has as many open as the caller allows (the cap on generations in progress), and reading and
-- writing the count under the balance row's lock makes concurrent holds of one user wait for each other,
-- in any number of processes. The audit checks it against the holds (`open_holds_counted`).
ALTER TABLE ledger_balances ADD COLUMN open_holds integer NOT NULL DEFAULT 0 CHECK (open_holds >= 0);
UPDATE ledger_balances b SET open_holds = h.open_count
FROM (SELECT user_id, count(*) AS open_count FROM ledger_holds WHERE status = 'open' GROUP BY user_id) h
WHERE h.user_id = b.user_id;

-- Rate limits per API key and endpoint class, by the generic cell rate algorithm: `tat` is the
-- theoretical arrival time, when the key's allowance for the class is whole again. One row per key and
-- class (a few per key, so nothing to purge), changed by one INSERT … ON CONFLICT per request, which
-- serialises the processes that share a key on the row. UNLOGGED: a crash forgets the limits' state (everyone
-- starts with a full allowance), which costs nothing that matters and saves a WAL write per request.
CREATE UNLOGGED TABLE rate_limits (
    key_id bigint NOT NULL,
    endpoint_class text NOT NULL CHECK (length(endpoint_class) BETWEEN 1 AND 50),
    tat timestamptz NOT NULL,
    -- Whether the last request was allowed (what the statement answers with).
    allowed boolean NOT NULL,
    PRIMARY KEY (key_id, endpoint_class)
) WITH (fillfactor = 50);
