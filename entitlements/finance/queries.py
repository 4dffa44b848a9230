"""All of finance's SQL: balances at a moment, the roll-forward's sums, the commit horizon's check for a
period close, exports (their rows as COPY queries, and their bookkeeping), closed periods, and the
generations a price what-if replays."""

from __future__ import annotations

from entitlements.finance.schemas import Dataset, ExportFormat

# The filter every read "as of" uses: dated before $at, or at or before a commit position (only below the
# snapshot's horizon, like the feed, so the answer is one no later commit can change). The caller binds
# at ($a), and the position's xid and id ($x, $i); unused ones are NULL.
_AS_OF = """
    ({at}::timestamptz IS NULL OR t.created_at < {at}::timestamptz)
    AND ({xid}::text IS NULL OR (
        t.written_by_xid < (SELECT pg_snapshot_xmin(pg_current_snapshot()))
        AND (t.written_by_xid, t.id) <= ({xid}::text::xid8, {tid}::bigint)))
"""

USER_BALANCE_AT = f"""
    SELECT coalesce(sum(p.amount) FILTER (WHERE a.kind = 'user_available'), 0)::bigint AS available,
           coalesce(sum(p.amount) FILTER (WHERE a.kind = 'user_held'), 0)::bigint AS held,
           (-coalesce(sum(p.amount) FILTER (WHERE a.kind = 'user_debt'), 0))::bigint AS owed
    FROM ledger_transactions t
    JOIN ledger_postings p ON p.transaction_id = t.id AND p.created_at = t.created_at
    JOIN ledger_accounts a ON a.id = p.account_id AND a.user_id = $1
    WHERE t.user_id = $1 AND {_AS_OF.format(at="$2", xid="$3", tid="$4")}
"""

# System accounts have no cached balance and no index by account: their postings are summed in one pass.
ACCOUNT_BALANCE_AT = f"""
    SELECT coalesce(sum(p.amount), 0)::bigint
    FROM ledger_postings p
    JOIN ledger_transactions t ON t.id = p.transaction_id AND t.created_at = p.created_at
    WHERE p.account_id = (SELECT id FROM ledger_accounts WHERE code = $1)
      AND {_AS_OF.format(at="$2", xid="$3", tid="$4")}
"""

# For the roll-forward: per system account, and per kind of user account, the sum of postings dated before
# $1 (opening), before $2 (closing), and the debits and credits dated in [$1, $2). One pass over postings.
ROLLFORWARD_SUMS = """
    SELECT CASE WHEN a.kind = 'system' THEN a.code ELSE a.kind END AS account,
           coalesce(sum(p.amount) FILTER (WHERE t.created_at < $1), 0)::bigint AS opening,
           coalesce(sum(p.amount), 0)::bigint AS closing,
           coalesce(sum(-p.amount) FILTER (WHERE t.created_at >= $1 AND p.amount < 0), 0)::bigint AS debits,
           coalesce(sum(p.amount) FILTER (WHERE t.created_at >= $1 AND p.amount > 0), 0)::bigint AS credits
    FROM ledger_postings p
    JOIN ledger_transactions t ON t.id = p.transaction_id AND t.created_at = p.created_at
    JOIN ledger_accounts a ON a.id = p.account_id
    WHERE t.created_at < $2
    GROUP BY 1
"""

# What could still commit ledger rows dated before $1: a client session of this database (other than this
# one) whose transaction began before $1 (`created_at` defaults to the writing transaction's start, so such
# a transaction could still write rows dated inside the period, whether or not it has written yet), and
# sessions whose transaction this role may not see (counted as blocking, to be safe). Prepared
# transactions are counted whatever their age: the service never prepares one, so any is a stranger.
STILL_RUNNING_BEFORE = """
    SELECT (SELECT count(*) FROM pg_stat_activity
            WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
              AND (xact_start < $1 OR (state IS NULL AND xact_start IS NULL))) AS sessions,
           (SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()) AS prepared
"""

INSERT_PERIOD = """
    INSERT INTO finance_periods (period, since, until, report, seal_head, closed_by)
    VALUES ($1, $2, $3, $4::jsonb, $5, $6)
    ON CONFLICT (period) DO NOTHING
    RETURNING period, since, until, report::text AS report, seal_head, closed_by, closed_at
"""

LIST_PERIODS = """
    SELECT period, since, until, report::text AS report, seal_head, closed_by, closed_at
    FROM finance_periods
    WHERE ($1::text IS NULL OR period < $1)
    ORDER BY period DESC
    LIMIT $2
"""

# Delivered generations of a window, counted by grid cell: the price what-if prices each cell once.
GENERATIONS_BY_CELL = """
    SELECT mode, resolution, duration_s, audio, count(*) AS generations
    FROM generations
    WHERE created_at >= $1 AND created_at < $2 AND status IN ('succeeded', 'refunded')
    GROUP BY mode, resolution, duration_s, audio
    ORDER BY mode, resolution, duration_s, audio
"""

# --- Exports -------------------------------------------------------------------------------------------

_EXPORT_COLUMNS = (
    "id, dataset, format, after_position, since, until, status, requested_by, manifest::text AS manifest, "
    "error, created_at, finished_at"
)

INSERT_EXPORT = f"""
    INSERT INTO finance_exports (id, dataset, format, after_position, since, until, status, requested_by)
    VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7)
    RETURNING {_EXPORT_COLUMNS}
"""

GET_EXPORT = f"SELECT {_EXPORT_COLUMNS} FROM finance_exports WHERE id = $1"

LIST_EXPORTS = f"""
    SELECT {_EXPORT_COLUMNS} FROM finance_exports
    WHERE ($1::timestamptz IS NULL OR (created_at, id) < ($1, $2::uuid))
    ORDER BY created_at DESC, id DESC
    LIMIT $3
"""

# Claims one export to run: a pending one, or one whose process died (its lease ran out), oldest first.
CLAIM_EXPORT = f"""
    UPDATE finance_exports SET status = 'running', lease_until = now() + make_interval(secs => $1)
    WHERE id = (
        SELECT id FROM finance_exports
        WHERE status = 'pending' OR (status = 'running' AND lease_until < now())
        ORDER BY created_at
        LIMIT 1
        FOR UPDATE SKIP LOCKED
    )
    RETURNING {_EXPORT_COLUMNS}
"""

FINISH_EXPORT = """
    UPDATE finance_exports SET status = 'done', manifest = $2::jsonb, finished_at = now(), lease_until = NULL
    WHERE id = $1 AND status = 'running'
"""

FAIL_EXPORT = """
    UPDATE finance_exports SET status = 'failed', error = $2, finished_at = now(), lease_until = NULL
    WHERE id = $1 AND status = 'running'
"""

# An export's rows: transactions committed after ($1 xid, $2 id) in commit order, below this snapshot's
# horizon (ledger/feed.py), dated in [$3, $4). Each row carries its commit position as the feed's opaque
# `c1` cursor (ledger/cursors.py: unpadded base64url of "c1|xid|id") and its time in RFC 3339, UTC, to the
# microsecond.
_POSITION = (
    "translate(encode(convert_to('c1|' || t.written_by_xid::text || '|' || t.id::text, 'UTF8'), 'base64'),"
    " E'+/=\\n', '-_')"
)
_CREATED_AT = """to_char(t.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
# The horizon as a scalar subquery: computed once per statement, not once per row.
_SELECTED = """
    t.written_by_xid < (SELECT pg_snapshot_xmin(pg_current_snapshot()))
    AND (t.written_by_xid, t.id) > ($1::text::xid8, $2::bigint)
    AND t.created_at >= $3::timestamptz AND t.created_at < $4::timestamptz
"""
_POSTINGS_OF_T = """
    (SELECT json_agg(json_build_object('account', a.code, 'amount', p.amount) ORDER BY a.code)
     FROM ledger_postings p JOIN ledger_accounts a ON a.id = p.account_id
     WHERE p.transaction_id = t.id AND p.created_at = t.created_at)
"""

TRANSACTION_COLUMNS = [
    "transaction_id",
    "kind",
    "idempotency_key",
    "user_id",
    "reference",
    "reverses_transaction_id",
    "actor",
    "reason",
    "created_at",
    "commit_position",
]
# A posting's commit position is its transaction's (in the transactions export); encoding it once per
# posting cost more than the rest of the row. The postings export resumes from its manifest's `through`.
POSTING_COLUMNS = ["transaction_id", "account", "amount"]
NDJSON_TRANSACTION_FIELDS = [*TRANSACTION_COLUMNS[:-1], "postings", "commit_position"]

_TRANSACTION_VALUES = {
    "transaction_id": "t.id",
    "kind": "t.kind",
    "idempotency_key": "t.idempotency_key",
    "user_id": "t.user_id",
    "reference": "t.reference",
    "reverses_transaction_id": "t.reverses_transaction_id",
    "actor": "t.actor",
    "reason": "t.reason",
    "created_at": _CREATED_AT,
    "postings": _POSTINGS_OF_T,
    "commit_position": _POSITION,
}
_POSTING_VALUES = {"transaction_id": "t.id", "account": "a.code", "amount": "p.amount"}
_FROM = {
    "transactions": "FROM ledger_transactions t",
    "postings": "FROM ledger_transactions t "
    "JOIN ledger_postings p ON p.transaction_id = t.id AND p.created_at = t.created_at "
    "JOIN ledger_accounts a ON a.id = p.account_id",
}
_ORDER = {"transactions": "ORDER BY t.written_by_xid, t.id", "postings": "ORDER BY t.written_by_xid, t.id, a.code"}


def columns(dataset: Dataset, file_format: ExportFormat) -> list[str]:
    if dataset == "postings":
        return POSTING_COLUMNS
    return TRANSACTION_COLUMNS if file_format == "csv" else NDJSON_TRANSACTION_FIELDS


def export_rows(dataset: Dataset, file_format: ExportFormat) -> str:
    """The query whose rows are the export's lines, for COPY … TO STDOUT (CSV; for NDJSON one JSON text a
    row, which COPY's CSV never quotes: PostgreSQL's JSON escapes every control character)."""
    values = _TRANSACTION_VALUES if dataset == "transactions" else _POSTING_VALUES
    names = columns(dataset, file_format)
    if file_format == "csv":
        select = ", ".join(f"{values[name]} AS {name}" for name in names)
    else:
        select = "json_build_object(" + ", ".join(f"'{name}', {values[name]}" for name in names) + ")::text"
    return f"SELECT {select} {_FROM[dataset]} WHERE {_SELECTED} {_ORDER[dataset]}"


# The last exported transaction's commit position, in the same snapshot: the manifest's `through`.
LAST_EXPORTED = f"""
    SELECT t.written_by_xid::text AS xid, t.id FROM ledger_transactions t
    WHERE {_SELECTED}
    ORDER BY t.written_by_xid DESC, t.id DESC
    LIMIT 1
"""
