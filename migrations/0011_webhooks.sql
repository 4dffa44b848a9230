-- Outgoing webhooks (entitlements/webhooks/, docs/webhooks.md): endpoints, the event outbox, one delivery
-- per event and endpoint, and every attempt.
--
-- Events are written by statement triggers in the same database transaction as their effect (a ledger
-- transaction, a generation's end, a tier change), so the group commit's one transaction carries its
-- events with it and nothing commits without its events, or the other way round.
--
-- Per-user order: each event gets its user's next `sequence` at COMMIT, from a deferred trigger that
-- locks the user's row of webhook_user_sequences (in user-id order) until the commit ends. A later
-- transaction of the same user waits for that row, so per user, sequence order is commit order and a
-- reader that sees sequence n+1 already sees n. A rolled-back transaction takes its stamps with it: no
-- gaps. The stamp is the last lock a transaction takes, and always in user order, so it cannot deadlock
-- with the ledger's own balance-row locks.

CREATE TABLE webhook_endpoints (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    url text NOT NULL CHECK (length(url) BETWEEN 1 AND 2000),
    description text NOT NULL DEFAULT '' CHECK (length(description) <= 1000),
    event_types text[] NOT NULL CHECK (cardinality(event_types) BETWEEN 1 AND 32),
    -- The signing secrets (whsec_...): needed in clear to sign, so kept only here and shown once.
    secret text NOT NULL,
    previous_secret text,
    previous_secret_expires_at timestamptz,
    status text NOT NULL DEFAULT 'enabled' CHECK (status IN ('enabled', 'disabled', 'removed')),
    disabled_reason text CHECK (length(disabled_reason) <= 1000),
    disabled_at timestamptz,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'disabled') = (disabled_at IS NOT NULL))
);

-- The outbox. `sequence` is NULL only inside the transaction that wrote the event (stamped at commit).
CREATE TABLE webhook_events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id text NOT NULL,
    type text NOT NULL CHECK (type IN (
        'generation.succeeded', 'generation.failed', 'generation.refunded',
        'balance.low', 'balance.depleted', 'balance.recovered',
        'tier.changed', 'credit.granted', 'debt.created', 'debt.repaid'
    )),
    data jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- For readers of every user's events in commit order (ledger/feed.py's rule).
    written_by_xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    sequence bigint,
    -- When the sequence was stamped: just before the commit (the benchmark's commit-to-delivery delay).
    sequenced_at timestamptz,
    UNIQUE (user_id, sequence)
);
CREATE INDEX webhook_events_commit_order ON webhook_events (written_by_xid, id);

CREATE TABLE webhook_user_sequences (
    user_id text PRIMARY KEY,
    last_sequence bigint NOT NULL CHECK (last_sequence > 0)
);

-- One per event and endpoint, created with the event (for endpoints enabled then and subscribed to its
-- type). Deliverers take the head of each (endpoint, user) queue with FOR UPDATE SKIP LOCKED and hold it
-- by a lease while they send.
CREATE TABLE webhook_deliveries (
    endpoint_id bigint NOT NULL REFERENCES webhook_endpoints (id),
    event_id bigint NOT NULL REFERENCES webhook_events (id),
    user_id text NOT NULL,
    sequence bigint NOT NULL,
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'cancelled')),
    attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_owner text,
    lease_expires_at timestamptz,
    last_status_code integer,
    last_error text,
    delivered_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (endpoint_id, event_id)
);
-- The queues' heads: pending deliveries by endpoint, user and sequence.
CREATE INDEX webhook_deliveries_queue ON webhook_deliveries (endpoint_id, user_id, sequence) WHERE status = 'pending';
-- What the deliverers claim, in the order it comes due.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_event ON webhook_deliveries (event_id);

-- Every attempt, successful or not: what the receiver answered, how long it took, what went wrong.
CREATE TABLE webhook_attempts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id bigint NOT NULL REFERENCES webhook_endpoints (id),
    event_id bigint NOT NULL REFERENCES webhook_events (id),
    attempt integer NOT NULL CHECK (attempt >= 1),
    status_code integer,
    latency_ms integer NOT NULL CHECK (latency_ms >= 0),
    error text CHECK (length(error) <= 1000),
    delivered boolean NOT NULL,
    deliverer text NOT NULL,
    attempted_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_attempts_endpoint ON webhook_attempts (endpoint_id, id);

-- Markers, as ledger_balance_checks: every statement that writes events adds one naming them, and the
-- deferred trigger on this table stamps their sequences at commit, then removes the marker.
CREATE TABLE webhook_sequence_marks (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_ids bigint[] NOT NULL
);

CREATE FUNCTION webhook_events_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WITH mine AS (
        SELECT e.id, e.user_id, e.type, row_number() OVER (PARTITION BY e.user_id ORDER BY e.id) AS n
        FROM webhook_events e WHERE e.id = ANY (NEW.event_ids) AND e.sequence IS NULL
    ), counts AS (
        SELECT user_id, count(*) AS n FROM mine GROUP BY user_id
    ), stamped AS (
        INSERT INTO webhook_user_sequences AS s (user_id, last_sequence)
        SELECT user_id, n FROM counts ORDER BY user_id
        ON CONFLICT (user_id) DO UPDATE SET last_sequence = s.last_sequence + excluded.last_sequence
        RETURNING s.user_id, s.last_sequence
    ), numbered AS (
        SELECT m.id, m.user_id, m.type, st.last_sequence - c.n + m.n AS sequence
        FROM mine m JOIN counts c USING (user_id) JOIN stamped st USING (user_id)
    ), events AS (
        UPDATE webhook_events e SET sequence = numbered.sequence, sequenced_at = clock_timestamp()
        FROM numbered WHERE e.id = numbered.id
    )
    INSERT INTO webhook_deliveries (endpoint_id, event_id, user_id, sequence)
    SELECT w.id, numbered.id, numbered.user_id, numbered.sequence
    FROM numbered JOIN webhook_endpoints w ON w.status = 'enabled' AND numbered.type = ANY (w.event_types);
    DELETE FROM webhook_sequence_marks WHERE id = NEW.id;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER webhook_events_stamp AFTER INSERT ON webhook_sequence_marks
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION webhook_events_stamp();

-- Events written by one statement: the rows of `events` (user_id, type, data), in order, and their marker.
CREATE FUNCTION webhook_events_marked() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_sequence_marks (event_ids) SELECT array_agg(id) FROM new_events HAVING count(*) > 0;
    RETURN NULL;
END $$;
CREATE TRIGGER webhook_events_marked AFTER INSERT ON webhook_events
    REFERENCING NEW TABLE AS new_events FOR EACH STATEMENT EXECUTE FUNCTION webhook_events_marked();

-- Credits and refunds, from the ledger transactions a statement wrote. Only those kinds read their
-- postings (the amount); holds, captures and voids, the hot path, cost a scan of the statement's own rows.
CREATE FUNCTION webhook_ledger_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_events (user_id, type, data)
    SELECT n.user_id,
           CASE WHEN n.kind = 'refund' THEN 'generation.refunded' ELSE 'credit.granted' END,
           CASE WHEN n.kind = 'refund' THEN jsonb_build_object(
               'generation_id', substr(n.reference, 12), 'transaction_id', n.id, 'moments', amount.moments,
               'reason', n.reason)
           ELSE jsonb_build_object(
               'transaction_id', n.id, 'kind', n.kind, 'moments', amount.moments, 'reference', n.reference,
               'reason', n.reason)
           END
    FROM new_transactions n
    CROSS JOIN LATERAL (
        SELECT -sum(p.amount) AS moments FROM ledger_postings p WHERE p.transaction_id = n.id AND p.amount < 0
    ) amount
    WHERE n.kind IN ('purchase', 'subscription_grant', 'grant', 'clawback_reversal')
       OR (n.kind = 'refund' AND n.reference LIKE 'generation:%')
    ORDER BY n.id;
    RETURN NULL;
END $$;
CREATE TRIGGER webhook_ledger_events AFTER INSERT ON ledger_transactions
    REFERENCING NEW TABLE AS new_transactions FOR EACH STATEMENT EXECUTE FUNCTION webhook_ledger_events();

-- Balance thresholds and debt: an event only when a user's level changes (available 0: depleted; below
-- the threshold: low; at or above it: recovered), or debt appears or is paid off. A row trigger whose WHEN
-- clause is false for nearly every update: PostgreSQL evaluates it as the row is written and queues
-- nothing, where a statement trigger would copy every updated balance row into two transition tables.
-- The threshold is the session setting moments.balance_low_threshold_moments (BALANCE_LOW_THRESHOLD_MOMENTS,
-- set on every pooled connection by the service); 100 when a session has none. A balance row's first
-- operation (version 0 before it) sets its starting level and fires no balance event.
CREATE FUNCTION webhook_balance_threshold() RETURNS bigint LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(nullif(current_setting('moments.balance_low_threshold_moments', true), '')::bigint, 100)
$$;

CREATE FUNCTION webhook_balance_events() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    threshold bigint := webhook_balance_threshold();
BEGIN
    INSERT INTO webhook_events (user_id, type, data)
    SELECT NEW.user_id, c.type, c.data
    FROM (
        SELECT 1 AS part,
               CASE WHEN NEW.available = 0 THEN 'balance.depleted'
                    WHEN NEW.available < threshold THEN 'balance.low' ELSE 'balance.recovered' END AS type,
               jsonb_build_object('available', NEW.available, 'held', NEW.held, 'owed', NEW.owed,
                                  'previous_available', OLD.available, 'threshold', threshold) AS data
        WHERE OLD.version > 0
          AND ((OLD.available = 0) <> (NEW.available = 0) OR (OLD.available < threshold) <> (NEW.available < threshold))
        UNION ALL
        SELECT 2, CASE WHEN OLD.owed = 0 THEN 'debt.created' ELSE 'debt.repaid' END,
               jsonb_build_object('owed', NEW.owed, 'previous_owed', OLD.owed, 'available', NEW.available)
        WHERE (OLD.owed = 0) <> (NEW.owed = 0)
    ) c
    ORDER BY c.part;
    RETURN NULL;
END $$;
CREATE TRIGGER webhook_balance_events AFTER UPDATE ON ledger_balances FOR EACH ROW
    WHEN ((OLD.owed = 0) <> (NEW.owed = 0)
          OR (OLD.version > 0 AND ((OLD.available = 0) <> (NEW.available = 0)
              OR (OLD.available < webhook_balance_threshold()) <> (NEW.available < webhook_balance_threshold()))))
    EXECUTE FUNCTION webhook_balance_events();

-- A generation's end: succeeded or failed (a refund is told by its ledger transaction, above).
CREATE FUNCTION webhook_generation_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_events (user_id, type, data)
    SELECT n.user_id, 'generation.' || n.status,
           jsonb_build_object(
               'generation_id', n.id, 'image_id', n.image_id, 'mode', n.mode, 'resolution', n.resolution,
               'duration_s', n.duration_s, 'audio', n.audio, 'moments', n.moments,
               'price_version', n.price_version, 'status', n.status, 'error', n.error)
    FROM old_generations o JOIN new_generations n USING (id)
    WHERE o.status <> n.status AND n.status IN ('succeeded', 'failed')
    ORDER BY n.user_id, n.id;
    RETURN NULL;
END $$;
CREATE TRIGGER webhook_generation_events AFTER UPDATE ON generations
    REFERENCING OLD TABLE AS old_generations NEW TABLE AS new_generations
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_generation_events();

-- A tier set by hand or by Stripe. A user without a row is FREE, so a first row names FREE as before.
CREATE FUNCTION webhook_tier_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_events (user_id, type, data)
    SELECT n.user_id, 'tier.changed', jsonb_build_object('tier', n.tier, 'previous_tier', 'FREE', 'source', n.source)
    FROM new_subscriptions n WHERE n.tier <> 'FREE' ORDER BY n.user_id;
    RETURN NULL;
END $$;
CREATE FUNCTION webhook_tier_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_events (user_id, type, data)
    SELECT n.user_id, 'tier.changed', jsonb_build_object('tier', n.tier, 'previous_tier', o.tier, 'source', n.source)
    FROM old_subscriptions o JOIN new_subscriptions n USING (user_id) WHERE o.tier <> n.tier ORDER BY n.user_id;
    RETURN NULL;
END $$;
CREATE TRIGGER webhook_tier_inserted AFTER INSERT ON subscriptions
    REFERENCING NEW TABLE AS new_subscriptions FOR EACH STATEMENT EXECUTE FUNCTION webhook_tier_inserted();
CREATE TRIGGER webhook_tier_updated AFTER UPDATE ON subscriptions
    REFERENCING OLD TABLE AS old_subscriptions NEW TABLE AS new_subscriptions
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_tier_updated();
