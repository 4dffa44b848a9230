-- Stripe: every webhook event as received, the customers we created, and the moment-pack purchases that
-- refunds and disputes claw back from. See entitlements/billing/.

-- Every verified webhook event, stored under its id before anything is applied (a duplicate delivery
-- finds its row). An event is applied in one transaction with its effects; until then `applied_at` is
-- NULL and `last_error` says why, and the sweeper retries it from `next_attempt_at` on.
CREATE TABLE stripe_events (
    id text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 255),
    type text NOT NULL CHECK (length(type) BETWEEN 1 AND 255),
    -- Stripe's own time of the event (its `created`): what ordering decisions compare.
    created timestamptz NOT NULL,
    livemode boolean NOT NULL DEFAULT false,
    payload jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    applied_at timestamptz,
    attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error text,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- What applying it did, for people reading the table ("credited 3000 subscription moments", "ignored: …").
    outcome text,
    -- The ledger transaction this event was meant to produce (reference = this id), or NULL for none:
    -- what reconciliation and the audit compare the ledger against.
    ledger_kind text CHECK (ledger_kind IN ('purchase', 'subscription_grant', 'clawback', 'clawback_reversal')),
    ledger_moments bigint CHECK (ledger_moments > 0),
    CHECK ((ledger_kind IS NULL) = (ledger_moments IS NULL)),
    CHECK (ledger_kind IS NULL OR applied_at IS NOT NULL)
);
CREATE INDEX stripe_events_pending ON stripe_events (next_attempt_at) WHERE applied_at IS NULL;
CREATE INDEX stripe_events_created ON stripe_events (created, id);

-- Stripe customers and the user each belongs to (metadata user_id, set when this service creates them).
CREATE TABLE stripe_customers (
    customer_id text PRIMARY KEY CHECK (length(customer_id) BETWEEN 1 AND 255),
    user_id text NOT NULL CHECK (length(user_id) BETWEEN 1 AND 200),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stripe_customers_user ON stripe_customers (user_id, created_at);

-- Moment packs bought through Checkout: what refunds and disputes of the payment find and claw back.
CREATE TABLE stripe_purchases (
    checkout_session_id text PRIMARY KEY CHECK (length(checkout_session_id) BETWEEN 1 AND 255),
    payment_intent_id text UNIQUE,
    -- Learned from the first charge event that names the payment intent.
    charge_id text UNIQUE,
    user_id text NOT NULL CHECK (length(user_id) BETWEEN 1 AND 200),
    pack_id text NOT NULL,
    moments bigint NOT NULL CHECK (moments > 0),
    amount_paid bigint NOT NULL CHECK (amount_paid >= 0),
    currency text NOT NULL,
    -- NULL when the whole credit repaid a debt and no lot was created.
    lot_id bigint REFERENCES ledger_lots (id),
    transaction_id bigint NOT NULL REFERENCES ledger_transactions (id),
    event_id text NOT NULL REFERENCES stripe_events (id),
    -- Stripe's cumulative amount_refunded as last applied, and the moments refunds took back for it.
    amount_refunded bigint NOT NULL DEFAULT 0 CHECK (amount_refunded >= 0),
    refund_moments bigint NOT NULL DEFAULT 0 CHECK (refund_moments >= 0),
    -- What open or lost disputes hold back (a won dispute gives its share back).
    dispute_moments bigint NOT NULL DEFAULT 0 CHECK (dispute_moments >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK (refund_moments + dispute_moments <= moments)
);
CREATE INDEX stripe_purchases_user ON stripe_purchases (user_id);

-- Disputes of purchases: what each took back, and how it ended.
CREATE TABLE stripe_disputes (
    dispute_id text PRIMARY KEY CHECK (length(dispute_id) BETWEEN 1 AND 255),
    checkout_session_id text NOT NULL REFERENCES stripe_purchases (checkout_session_id),
    moments bigint NOT NULL CHECK (moments >= 0),
    status text NOT NULL CHECK (status IN ('open', 'won', 'lost')),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stripe_disputes_purchase ON stripe_disputes (checkout_session_id);
