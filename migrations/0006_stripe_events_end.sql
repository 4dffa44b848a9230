-- Stripe: every stored event ends (applied, applied without effect, or failed after bounded attempts),
-- subscription invoices are recorded so that refunds and disputes of their charges find what they
-- granted, and disputes may be of an invoice's charge as well as of a moment pack's. See
-- entitlements/billing/ and docs/stripe.md.

-- Where an event is in its life: `pending` until it ends; then `applied` (it did something),
-- `applied_without_effect` (it was understood and there was nothing to do), or `failed` (it could not be
-- applied; `last_error` says why; an admin may re-apply it after a fix).
ALTER TABLE stripe_events
    ADD COLUMN state text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'applied', 'applied_without_effect', 'failed')),
    ADD COLUMN failed_at timestamptz,
    -- The last time an admin asked for a failed or pending event to be applied again, and who.
    ADD COLUMN reapplied_at timestamptz,
    ADD COLUMN reapplied_by text CHECK (length(reapplied_by) BETWEEN 1 AND 400);
UPDATE stripe_events SET state = CASE
    WHEN applied_at IS NULL THEN 'pending'
    WHEN outcome LIKE 'ignored%' THEN 'applied_without_effect'
    ELSE 'applied' END;
ALTER TABLE stripe_events
    ADD CONSTRAINT stripe_events_applied_state
        CHECK ((state IN ('applied', 'applied_without_effect')) = (applied_at IS NOT NULL)),
    ADD CONSTRAINT stripe_events_failed_state CHECK ((state = 'failed') = (failed_at IS NOT NULL)),
    ADD CONSTRAINT stripe_events_effect_applied CHECK (ledger_kind IS NULL OR state = 'applied');
DROP INDEX stripe_events_pending;
CREATE INDEX stripe_events_pending ON stripe_events (next_attempt_at) WHERE state = 'pending';
CREATE INDEX stripe_events_failed ON stripe_events (created, id) WHERE state = 'failed';

-- Every invoice.paid applied, with what it granted (nothing, for a proration-only or non-subscription
-- invoice): what a refund or dispute of the invoice's charge claws back from.
CREATE TABLE stripe_invoices (
    invoice_id text PRIMARY KEY CHECK (length(invoice_id) BETWEEN 1 AND 255),
    event_id text NOT NULL REFERENCES stripe_events (id),
    user_id text CHECK (length(user_id) BETWEEN 1 AND 200),
    subscription_id text,
    tier text,
    -- The allowance granted (0: nothing), its lot (NULL when all of it repaid debt) and when it expires.
    moments bigint NOT NULL CHECK (moments >= 0),
    lot_id bigint REFERENCES ledger_lots (id),
    expires_at timestamptz,
    transaction_id bigint REFERENCES ledger_transactions (id),
    amount_paid bigint NOT NULL CHECK (amount_paid >= 0),
    -- Stripe's cumulative amount_refunded of the invoice's charge as last applied, the moments refunds
    -- took back for it, and what open or lost disputes hold back.
    amount_refunded bigint NOT NULL DEFAULT 0 CHECK (amount_refunded >= 0),
    refund_moments bigint NOT NULL DEFAULT 0 CHECK (refund_moments >= 0),
    dispute_moments bigint NOT NULL DEFAULT 0 CHECK (dispute_moments >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK (moments = 0 OR (user_id IS NOT NULL AND transaction_id IS NOT NULL AND expires_at IS NOT NULL)),
    CHECK (refund_moments + dispute_moments <= moments)
);

-- Which payment (a payment intent or, before basil, a charge) paid which invoice: learned from
-- invoice_payment.paid events, from pre-basil invoices (they name their charge and payment intent) and
-- from Stripe's invoice payments when a refund or dispute asks.
CREATE TABLE stripe_invoice_payments (
    payment_id text PRIMARY KEY CHECK (length(payment_id) BETWEEN 1 AND 255),
    invoice_id text NOT NULL CHECK (length(invoice_id) BETWEEN 1 AND 255),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- A dispute is of a moment pack's charge or of an invoice's.
ALTER TABLE stripe_disputes
    ALTER COLUMN checkout_session_id DROP NOT NULL,
    ADD COLUMN invoice_id text REFERENCES stripe_invoices (invoice_id),
    ADD CONSTRAINT stripe_disputes_of_one CHECK ((checkout_session_id IS NULL) <> (invoice_id IS NULL));
CREATE INDEX stripe_disputes_invoice ON stripe_disputes (invoice_id) WHERE invoice_id IS NOT NULL;
