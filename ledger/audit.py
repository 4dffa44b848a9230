"""Every invariant of the ledger, checked against the database as it is (finance's and `moments audit`'s).

Each check is one SQL query that returns offending rows; an empty answer is a pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from ledger.engine import Connection

EXAMPLES_MAX = 5

# (name, what it means, query returning offenders)
CHECKS: tuple[tuple[str, str, str], ...] = (
    (
        "transactions_balanced",
        "every transaction has at least two postings summing to zero",
        """
        SELECT t.id, coalesce(sum(p.amount), 0) AS total, count(p.*) AS legs
        FROM ledger_transactions t
        LEFT JOIN ledger_postings p ON p.transaction_id = t.id AND p.created_at = t.created_at
        GROUP BY t.id, t.created_at HAVING count(p.*) < 2 OR coalesce(sum(p.amount), 0) <> 0
        """,
    ),
    (
        "postings_have_transactions",
        "every posting belongs to a transaction, at that transaction's time (in its month's partition)",
        """
        SELECT p.transaction_id, p.account_id, p.created_at FROM ledger_postings p
        WHERE NOT EXISTS (
            SELECT 1 FROM ledger_transactions t WHERE t.id = p.transaction_id AND t.created_at = p.created_at
        )
        """,
    ),
    (
        "idempotency_keys_match_transactions",
        "every transaction is named by the key table's row for its idempotency key, and every key row by one "
        "transaction (what keeps keys unique across months)",
        """
        SELECT t.id, t.idempotency_key, k.transaction_id AS key_transaction_id, k.idempotency_key AS key
        FROM ledger_transactions t
        FULL JOIN ledger_idempotency_keys k
            ON k.transaction_id = t.id AND k.created_at = t.created_at AND k.idempotency_key = t.idempotency_key
        WHERE t.id IS NULL OR k.transaction_id IS NULL
        """,
    ),
    (
        "trial_balance_zero",
        "all postings of all accounts sum to zero",
        "SELECT sum(amount) AS total FROM ledger_postings HAVING coalesce(sum(amount), 0) <> 0",
    ),
    (
        "user_accounts_have_balance_rows",
        "every user account (and so every moment posted to one) belongs to a user's balance row",
        """
        SELECT a.id, a.code FROM ledger_accounts a
        WHERE a.kind <> 'system' AND NOT EXISTS (
            SELECT 1 FROM ledger_balances b
            WHERE a.id IN (b.available_account_id, b.held_account_id, b.debt_account_id)
        )
        """,
    ),
    (
        "hold_transactions_have_holds",
        "every hold transaction has its hold, and every settling transaction is some hold's settlement",
        """
        SELECT t.id, t.kind FROM ledger_transactions t
        WHERE (t.kind = 'hold' AND NOT EXISTS (SELECT 1 FROM ledger_holds h WHERE h.hold_transaction_id = t.id))
           OR (t.kind IN ('capture', 'void')
               AND NOT EXISTS (SELECT 1 FROM ledger_holds h WHERE h.settle_transaction_id = t.id))
        """,
    ),
    (
        "cached_balances_match_postings",
        "each user's cached available, held and owed equal the sums of their accounts' postings",
        """
        -- One pass over all postings (a CTE named thrice is computed once): nothing indexes them by account.
        WITH posted AS (SELECT account_id, sum(amount) AS total FROM ledger_postings GROUP BY account_id)
        SELECT b.user_id, b.available, b.held, b.owed, coalesce(available.total, 0) AS posted_available,
               coalesce(held.total, 0) AS posted_held, -coalesce(debt.total, 0) AS posted_owed
        FROM ledger_balances b
        LEFT JOIN posted available ON available.account_id = b.available_account_id
        LEFT JOIN posted held ON held.account_id = b.held_account_id
        LEFT JOIN posted debt ON debt.account_id = b.debt_account_id
        WHERE b.available <> coalesce(available.total, 0) OR b.held <> coalesce(held.total, 0)
           OR b.owed <> -coalesce(debt.total, 0)
        """,
    ),
    (
        "user_balances_non_negative",
        "available and held are never negative; debt only as recorded by a clawback",
        """
        SELECT user_id, available, held, owed FROM ledger_balances
        WHERE available < 0 OR held < 0 OR owed < 0
        UNION ALL
        SELECT t.user_id, NULL, NULL, p.amount FROM ledger_postings p
        JOIN ledger_accounts a ON a.id = p.account_id
        JOIN ledger_transactions t ON t.id = p.transaction_id AND t.created_at = p.created_at
        WHERE a.kind = 'user_debt' AND p.amount < 0 AND t.kind <> 'clawback'
        """,
    ),
    (
        "held_equals_open_holds",
        "each user's held balance equals the sum of their open holds",
        """
        SELECT b.user_id, b.held, coalesce(h.open_total, 0) AS open_holds
        FROM ledger_balances b
        LEFT JOIN (SELECT user_id, sum(amount) AS open_total FROM ledger_holds WHERE status = 'open'
                   GROUP BY user_id) h ON h.user_id = b.user_id
        WHERE b.held <> coalesce(h.open_total, 0)
        """,
    ),
    (
        "open_holds_counted",
        "each user's count of open holds (what the cap on generations in progress reads) is their open holds",
        """
        SELECT b.user_id, b.open_holds, coalesce(h.open_count, 0) AS open_count
        FROM ledger_balances b
        LEFT JOIN (SELECT user_id, count(*) AS open_count FROM ledger_holds WHERE status = 'open'
                   GROUP BY user_id) h ON h.user_id = b.user_id
        WHERE b.open_holds <> coalesce(h.open_count, 0)
        """,
    ),
    (
        "available_equals_lots",
        "each user's available balance equals the sum of their lots' remaining amounts",
        """
        SELECT b.user_id, b.available, coalesce(l.remaining, 0) AS lots_remaining
        FROM ledger_balances b
        LEFT JOIN (SELECT user_id, sum(remaining) AS remaining FROM ledger_lots GROUP BY user_id) l
            ON l.user_id = b.user_id
        WHERE b.available <> coalesce(l.remaining, 0)
        """,
    ),
    (
        "holds_drawn_from_lots",
        "each hold drew exactly its amount from lots, and its shares account for what was captured and refunded",
        """
        SELECT h.id, h.amount, s.drawn, h.captured, h.refunded, s.drawn - s.returned AS kept,
               s.refunded AS shares_refunded
        FROM ledger_holds h
        CROSS JOIN LATERAL (
            SELECT sum(drawn) AS drawn, sum(returned) AS returned, sum(refunded) AS refunded
            FROM unnest(h.share_drawn, h.share_returned, h.share_refunded) AS share (drawn, returned, refunded)
        ) AS s
        WHERE s.drawn IS DISTINCT FROM h.amount
            OR (h.status = 'captured' AND s.drawn - s.returned <> h.captured)
            OR (h.status IN ('voided', 'expired') AND s.returned <> h.amount)
            OR (h.status = 'open' AND s.returned <> 0)
            OR s.refunded <> h.refunded
        """,
    ),
    (
        "holds_settled_once",
        "each ended hold has exactly one settling transaction of the right kind, and each hold's transactions "
        "name it (so none serves two holds); open holds have none",
        """
        SELECT h.id, h.status, t.kind
        FROM ledger_holds h
        LEFT JOIN ledger_transactions t ON t.id = h.settle_transaction_id
        LEFT JOIN ledger_transactions ht ON ht.id = h.hold_transaction_id
        WHERE (h.status = 'captured' AND t.kind IS DISTINCT FROM 'capture')
           OR (h.status IN ('voided', 'expired') AND t.kind IS DISTINCT FROM 'void')
           OR (h.status = 'open' AND h.settle_transaction_id IS NOT NULL)
           OR (t.id IS NOT NULL AND (t.result ->> 'hold_id')::bigint IS DISTINCT FROM h.id)
           OR ht.kind IS DISTINCT FROM 'hold' OR (ht.result ->> 'hold_id')::bigint IS DISTINCT FROM h.id
        """,
    ),
    (
        "refunds_within_captures",
        "refunds of a hold never exceed what was captured",
        """
        SELECT h.id, h.captured, coalesce(sum(-p.amount), 0) AS refunded
        FROM ledger_holds h
        JOIN ledger_transactions t ON t.kind = 'refund' AND t.reverses_transaction_id = h.settle_transaction_id
        JOIN ledger_postings p ON p.transaction_id = t.id AND p.created_at = t.created_at
        JOIN ledger_accounts a ON a.id = p.account_id AND a.code = 'system:revenue'
        GROUP BY h.id, h.captured, h.refunded
        HAVING coalesce(sum(-p.amount), 0) > h.captured OR coalesce(sum(-p.amount), 0) <> h.refunded
        """,
    ),
)


class Check(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    ok: bool
    detail: str


class AuditReport(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    checks: list[Check]


ExtraCheck = tuple[str, str, str]


async def audit(connection: Connection, extra_checks: Sequence[ExtraCheck] = ()) -> AuditReport:
    """Runs every check in one repeatable-read snapshot, so they all see the same ledger."""
    results = []
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        # The checks read whole tables: joined and summed month by month, each hash table holds one
        # partition's rows rather than the whole ledger's.
        await connection.execute(
            "SET LOCAL enable_partitionwise_join = on; SET LOCAL enable_partitionwise_aggregate = on"
        )
        for name, meaning, query in (*CHECKS, *extra_checks):
            rows = await connection.fetch(f"SELECT * FROM ({query}) AS offenders LIMIT {EXAMPLES_MAX + 1}")
            if not rows:
                results.append(Check(name=name, ok=True, detail=meaning))
                continue
            examples = "; ".join(
                ", ".join(f"{key}={value}" for key, value in row.items()) for row in rows[:EXAMPLES_MAX]
            )
            more = " (and more)" if len(rows) > EXAMPLES_MAX else ""
            results.append(Check(name=name, ok=False, detail=f"{meaning}: violated by {examples}{more}"))
    return AuditReport(ok=all(check.ok for check in results), checks=results)
