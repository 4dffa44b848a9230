"""Every SQL statement of billing: Stripe's events, customers, subscriptions, purchases and disputes.

Billing writes the ledger only through its operations (`ledger.Ledger.execute_in`) and reads it through
the ledger's own functions, except in the reconciliation and audit statements at the end: those compare
Stripe's side and the ledger's side in one set-based statement (see there why).
"""

# Events ---------------------------------------------------------------------------------------------

STORE_EVENT = """
INSERT INTO stripe_events (id, type, created, livemode, payload) VALUES ($1, $2, $3, $4, $5::jsonb)
ON CONFLICT (id) DO NOTHING RETURNING true
"""

_EVENT_TO_APPLY = "SELECT type, created, payload, state, outcome, last_error FROM stripe_events WHERE id = $1"
EVENT_FOR_UPDATE = f"{_EVENT_TO_APPLY} FOR UPDATE"
# The sweeper's: an event another process is applying right now is left to that process.
EVENT_FOR_UPDATE_SKIP_LOCKED = f"{_EVENT_TO_APPLY} FOR UPDATE SKIP LOCKED"

# $5: applied or applied_without_effect.
MARK_EVENT_APPLIED = """
UPDATE stripe_events
SET state = $5, applied_at = now(), attempts = attempts + 1, last_error = NULL, next_attempt_at = now(),
    outcome = $2, ledger_kind = $3, ledger_moments = $4
WHERE id = $1
"""

# One more failed attempt: the event ends failed when it can never apply ($5) or has had its attempts
# ($6); otherwise the next attempt waits base ($4) * 2^attempts seconds, at most $3 (exponent bounded).
RECORD_EVENT_FAILURE = """
UPDATE stripe_events
SET attempts = attempts + 1, last_error = $2,
    state = CASE WHEN $5 OR attempts + 1 >= $6 THEN 'failed' ELSE 'pending' END,
    failed_at = CASE WHEN $5 OR attempts + 1 >= $6 THEN now() END,
    next_attempt_at = now() + make_interval(secs => least($3, $4 * power(2, least(attempts, 20))))
WHERE id = $1 AND state = 'pending'
RETURNING state
"""

# Oldest Stripe time first, so a purchase is applied before its refund.
DUE_EVENTS = """
SELECT id FROM stripe_events WHERE state = 'pending' AND next_attempt_at <= now()
ORDER BY created, id LIMIT $1
"""

# An admin asks for a failed (or still pending) event to be applied again: a fresh set of attempts.
REOPEN_EVENT = """
UPDATE stripe_events
SET state = 'pending', failed_at = NULL, attempts = 0, next_attempt_at = now(), reapplied_at = now(),
    reapplied_by = $2
WHERE id = $1 AND state IN ('pending', 'failed')
RETURNING id
"""

_EVENT_COLUMNS = """
id, type, created, livemode, state, attempts, last_error, outcome, ledger_kind, ledger_moments, received_at,
applied_at, failed_at, reapplied_at, reapplied_by
"""
EVENT = f"SELECT {_EVENT_COLUMNS} FROM stripe_events WHERE id = $1"
# Failed (or pending) events, oldest Stripe time first, after the cursor ($2, $3) when given.
EVENTS_IN_STATE = f"""
SELECT {_EVENT_COLUMNS} FROM stripe_events
WHERE state = $1 AND ($2::timestamptz IS NULL OR (created, id) > ($2, $3))
ORDER BY created, id LIMIT $4
"""

# For /metrics: events that have not ended, those that ended failed, and the oldest pending one's age.
# One subquery per state, each matching a partial index's predicate, so a scrape never reads the table.
EVENT_BACKLOG = """
SELECT (SELECT count(*) FROM stripe_events WHERE state = 'pending') AS pending,
       (SELECT count(*) FROM stripe_events WHERE state = 'failed') AS failed,
       coalesce(extract(epoch FROM now() - (SELECT min(received_at) FROM stripe_events WHERE state = 'pending')),
                0)::float8 AS oldest_pending_s
"""

# Customers ------------------------------------------------------------------------------------------

USER_OF_CUSTOMER = "SELECT user_id FROM stripe_customers WHERE customer_id = $1"
CUSTOMER_OF_USER = "SELECT customer_id FROM stripe_customers WHERE user_id = $1 ORDER BY created_at LIMIT 1"
REMEMBER_CUSTOMER = """
INSERT INTO stripe_customers (customer_id, user_id) VALUES ($1, $2) ON CONFLICT (customer_id) DO NOTHING
"""

# Subscriptions (the tier; `tiers` reads it) ----------------------------------------------------------

SUBSCRIPTION_FOR_UPDATE = """
SELECT source, stripe_subscription_id, stripe_status, stripe_event_created FROM subscriptions
WHERE user_id = $1 FOR UPDATE
"""

INSERT_SUBSCRIPTION = """
INSERT INTO subscriptions (user_id, tier, source, stripe_subscription_id, stripe_status,
                           current_period_end, cancel_at_period_end, stripe_event_created)
VALUES ($1, $2, 'stripe', $3, $4, $5, $6, $7)
ON CONFLICT (user_id) DO NOTHING RETURNING true
"""

UPDATE_SUBSCRIPTION = """
UPDATE subscriptions
SET tier = $2, source = 'stripe', stripe_subscription_id = $3, stripe_status = $4, current_period_end = $5,
    cancel_at_period_end = $6, stripe_event_created = $7, updated_at = now()
WHERE user_id = $1
"""

# Purchases of moment packs ----------------------------------------------------------------------------

PURCHASE_EVENT_FOR_UPDATE = "SELECT event_id FROM stripe_purchases WHERE checkout_session_id = $1 FOR UPDATE"

INSERT_PURCHASE = """
INSERT INTO stripe_purchases (checkout_session_id, payment_intent_id, user_id, pack_id, moments,
                              amount_paid, currency, lot_id, transaction_id, event_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
"""

# The purchase a charge (or its payment intent) paid for: what its refunds and disputes claw back from.
PURCHASE_OF_CHARGE_FOR_UPDATE = """
SELECT checkout_session_id AS key, charge_id, user_id, pack_id AS label, moments, amount_paid, lot_id,
       NULL::timestamptz AS expires_at, amount_refunded, refund_moments, dispute_moments
FROM stripe_purchases
WHERE charge_id = $1 OR ($2::text IS NOT NULL AND payment_intent_id = $2)
ORDER BY created_at LIMIT 1
FOR UPDATE
"""

SET_PURCHASE_CHARGE = "UPDATE stripe_purchases SET charge_id = $2 WHERE checkout_session_id = $1"

# Subscription invoices ---------------------------------------------------------------------------------

INSERT_INVOICE = """
INSERT INTO stripe_invoices (invoice_id, event_id, user_id, subscription_id, tier, moments, lot_id, expires_at,
                             transaction_id, amount_paid)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (invoice_id) DO NOTHING
"""

INVOICE_FOR_UPDATE = """
SELECT invoice_id AS key, NULL::text AS charge_id, user_id, tier AS label, moments, amount_paid, lot_id,
       expires_at, amount_refunded, refund_moments, dispute_moments
FROM stripe_invoices WHERE invoice_id = $1
FOR UPDATE
"""

REMEMBER_INVOICE_PAYMENT = """
INSERT INTO stripe_invoice_payments (payment_id, invoice_id) VALUES ($1, $2) ON CONFLICT (payment_id) DO NOTHING
"""
INVOICE_OF_PAYMENT = """
SELECT invoice_id FROM stripe_invoice_payments WHERE payment_id = ANY($1::text[]) ORDER BY created_at LIMIT 1
"""

# What refunds and disputes change on a purchase or an invoice (the same columns on both tables) --------


def _on_paid(table: str, key: str) -> dict[str, str]:
    return {
        "set_amount_refunded": f"UPDATE {table} SET amount_refunded = $2 WHERE {key} = $1",
        # A refund's moments ($3) include those shifted from open disputes ($4), which no longer count there.
        "record_refund": f"""
            UPDATE {table}
            SET amount_refunded = $2, refund_moments = refund_moments + $3, dispute_moments = dispute_moments - $4
            WHERE {key} = $1""",
        "add_dispute_moments": f"UPDATE {table} SET dispute_moments = dispute_moments + $2 WHERE {key} = $1",
        # A won dispute gives its moments back; the reversal's lot ($3) is where a later refund takes from.
        "reverse_dispute_moments": f"""
            UPDATE {table} SET dispute_moments = dispute_moments - $2, lot_id = coalesce($3, lot_id)
            WHERE {key} = $1""",
        "open_disputes_for_update": f"""
            SELECT dispute_id, moments FROM stripe_disputes
            WHERE {key} = $1 AND status = 'open' AND moments > 0
            ORDER BY dispute_id FOR UPDATE""",
    }


ON_PURCHASE = _on_paid("stripe_purchases", "checkout_session_id")
ON_INVOICE = _on_paid("stripe_invoices", "invoice_id")

# Disputes --------------------------------------------------------------------------------------------

DISPUTE_FOR_UPDATE = "SELECT status, moments FROM stripe_disputes WHERE dispute_id = $1 FOR UPDATE"

# Of a purchase ($2) or of an invoice ($3).
INSERT_DISPUTE = """
INSERT INTO stripe_disputes (dispute_id, checkout_session_id, invoice_id, moments, status) VALUES ($1, $2, $3, $4, $5)
"""

TAKE_FROM_DISPUTE = "UPDATE stripe_disputes SET moments = moments - $2, updated_at = now() WHERE dispute_id = $1"
CLOSE_DISPUTE = "UPDATE stripe_disputes SET status = $2, updated_at = now() WHERE dispute_id = $1"

# Reconciliation and audit ----------------------------------------------------------------------------
# These join the ledger's tables on purpose. Finance's reconciliation compares Stripe's side (the
# events and what each recorded) with the ledger's side (the transactions referencing them) in ONE
# statement over a whole window, and the audit checks run as SQL inside the ledger's own repeatable-read
# snapshot (`ledger.ExtraCheck` is a query). Fetching the ledger's side through its API and matching in
# Python would page every transaction of the window into this process only to join it here.

# The moments a ledger transaction `t` moved: its one posting on a system account (a credit's source, a
# clawback's destination), as a positive number.
_TRANSACTION_MOMENTS = """
    CROSS JOIN LATERAL (
        SELECT abs(sum(p.amount))::bigint AS moments
        FROM ledger_postings p JOIN ledger_accounts a ON a.id = p.account_id
        WHERE p.transaction_id = t.id AND p.created_at = t.created_at AND a.kind = 'system'
    ) m
"""

# Every applied event that recorded a ledger effect, unless exactly one transaction of that kind and
# amount references it.
AUDIT_EVENTS_WITHOUT_THEIR_TRANSACTION = f"""
SELECT e.id, e.ledger_kind, e.ledger_moments, t.transactions, t.kinds, t.moments
FROM stripe_events e
LEFT JOIN LATERAL (
    SELECT count(*) AS transactions, array_agg(t.kind) AS kinds, sum(m.moments) AS moments
    FROM ledger_transactions t {_TRANSACTION_MOMENTS} WHERE t.reference = e.id
) t ON true
WHERE e.ledger_kind IS NOT NULL
  AND (t.transactions <> 1 OR t.kinds[1] <> e.ledger_kind OR t.moments <> e.ledger_moments)
"""

# Every transaction of a kind only Stripe events produce, unless the event it references recorded it.
AUDIT_TRANSACTIONS_WITHOUT_THEIR_EVENT = """
SELECT t.id, t.kind, t.reference, e.ledger_kind AS event_kind
FROM ledger_transactions t LEFT JOIN stripe_events e ON e.id = t.reference
WHERE t.kind IN ('purchase', 'subscription_grant', 'clawback', 'clawback_reversal')
  AND e.ledger_kind IS DISTINCT FROM t.kind
"""

# The money events of a window (by Stripe's `created`), and any that has not ended or ended failed, each
# with the transactions referencing it as JSON.
RECONCILED_EVENTS = f"""
SELECT e.id, e.type, e.created, e.state, e.outcome, e.last_error, e.attempts,
       e.ledger_kind, e.ledger_moments,
       coalesce((
           SELECT json_agg(json_build_object(
               'transaction_id', t.id, 'kind', t.kind, 'user_id', t.user_id, 'moments', m.moments,
               'reference', t.reference, 'created_at', t.created_at) ORDER BY t.id)
           FROM ledger_transactions t {_TRANSACTION_MOMENTS} WHERE t.reference = e.id
       ), '[]')::text AS transactions
FROM stripe_events e
WHERE (e.type = ANY($1::text[]) OR e.ledger_kind IS NOT NULL OR e.state IN ('pending', 'failed'))
  AND ($2::timestamptz IS NULL OR e.created >= $2) AND ($3::timestamptz IS NULL OR e.created < $3)
ORDER BY e.created, e.id
LIMIT $4
"""

# The Stripe-kind transactions of a window (by `created_at`) that reference no stored event.
STRAY_TRANSACTIONS = f"""
SELECT t.id AS transaction_id, t.kind, t.user_id, m.moments, t.reference, t.created_at
FROM ledger_transactions t {_TRANSACTION_MOMENTS}
WHERE t.kind = ANY($1::text[])
  AND ($2::timestamptz IS NULL OR t.created_at >= $2) AND ($3::timestamptz IS NULL OR t.created_at < $3)
  AND NOT EXISTS (SELECT 1 FROM stripe_events e WHERE e.id = t.reference)
ORDER BY t.id
"""

# Lookups (the console's search and journal) -------------------------------------------------------------

# The users a Stripe id belongs to: a customer, a Checkout session, a payment intent, a charge or a dispute
# (each by its unique or primary key).
USERS_OF_STRIPE_ID = """
(SELECT user_id, 'Stripe customer' AS matched FROM stripe_customers WHERE customer_id = $1)
UNION ALL
(SELECT user_id, 'Stripe Checkout session' FROM stripe_purchases WHERE checkout_session_id = $1)
UNION ALL
(SELECT user_id, 'Stripe payment intent' FROM stripe_purchases WHERE payment_intent_id = $1)
UNION ALL
(SELECT user_id, 'Stripe charge' FROM stripe_purchases WHERE charge_id = $1)
UNION ALL
(SELECT p.user_id, 'Stripe dispute' FROM stripe_disputes d
 JOIN stripe_purchases p ON p.checkout_session_id = d.checkout_session_id WHERE d.dispute_id = $1)
LIMIT $2
"""

EVENTS_BY_ID = "SELECT id, type, created, outcome FROM stripe_events WHERE id = ANY($1::text[])"
