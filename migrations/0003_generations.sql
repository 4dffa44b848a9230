-- Tiers, generations, their job queue (a transactional outbox) and the API's idempotency records.

-- A user's tier. No row means FREE; the gate fails closed.
CREATE TABLE subscriptions (
    user_id text PRIMARY KEY CHECK (length(user_id) BETWEEN 1 AND 200),
    tier text NOT NULL CHECK (tier IN ('FREE', 'PREMIUM', 'ULTIMATE')),
    source text NOT NULL CHECK (source IN ('manual', 'stripe')),
    stripe_subscription_id text,
    stripe_status text,
    current_period_end timestamptz,
    cancel_at_period_end boolean NOT NULL DEFAULT false,
    -- The Stripe event time of the state stored here: an older event never overwrites a newer one.
    stripe_event_created timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The first answer to every idempotent POST, replayed for the same caller, key and request. Each
-- operation answers with one status (its route's), so only the body is kept; it is NULL only inside
-- the transaction that claimed the key, so a committed row always has its answer.
CREATE TABLE api_idempotency (
    caller_key_id bigint NOT NULL,
    idempotency_key text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    operation text NOT NULL,
    request_hash bytea NOT NULL CHECK (length(request_hash) = 32),
    response_body jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (caller_key_id, idempotency_key)
);
CREATE INDEX api_idempotency_created ON api_idempotency (created_at);

CREATE TABLE generations (
    id uuid PRIMARY KEY,
    user_id text NOT NULL CHECK (length(user_id) BETWEEN 1 AND 200),
    image_id text NOT NULL CHECK (length(image_id) BETWEEN 1 AND 200),
    prompt text NOT NULL CHECK (length(prompt) BETWEEN 1 AND 5000),
    mode text NOT NULL CHECK (mode IN ('advanced', 'adult')),
    resolution text NOT NULL,
    duration_s integer NOT NULL CHECK (duration_s > 0),
    audio boolean NOT NULL,
    moments bigint NOT NULL CHECK (moments > 0),
    price_version text NOT NULL,
    status text NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'refunded')),
    error text,
    hold_id bigint NOT NULL UNIQUE REFERENCES ledger_holds (id),
    video_path text,
    video_bytes bigint,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((status IN ('succeeded', 'refunded')) = (video_path IS NOT NULL)),
    CHECK (status <> 'failed' OR error IS NOT NULL)
);
CREATE INDEX generations_user_newest ON generations (user_id, created_at DESC, id DESC);
CREATE INDEX generations_user_image_newest ON generations (user_id, image_id, created_at DESC, id DESC);
CREATE INDEX generations_unsettled ON generations (created_at) WHERE status IN ('queued', 'running');

-- A final generation stays final: succeeded may only become refunded; failed and refunded never change.
CREATE FUNCTION generations_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status = NEW.status THEN
        RETURN NEW;
    END IF;
    IF NOT (
        (OLD.status = 'queued' AND NEW.status IN ('running', 'succeeded', 'failed'))
        OR (OLD.status = 'running' AND NEW.status IN ('succeeded', 'failed'))
        OR (OLD.status = 'succeeded' AND NEW.status = 'refunded')
    ) THEN
        RAISE EXCEPTION 'generation % may not go from % to %', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER generations_guard BEFORE UPDATE ON generations
    FOR EACH ROW EXECUTE FUNCTION generations_guard();

-- The outbox: written in the same transaction as the generation and its hold; dispatchers take jobs
-- with FOR UPDATE SKIP LOCKED and hold them by a lease that lapses if the dispatcher dies.
CREATE TABLE generation_jobs (
    generation_id uuid PRIMARY KEY REFERENCES generations (id),
    done boolean NOT NULL DEFAULT false,
    attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    run_after timestamptz NOT NULL DEFAULT now(),
    lease_owner text,
    lease_expires_at timestamptz,
    first_submitted_at timestamptz,
    last_error text,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX generation_jobs_due ON generation_jobs (run_after) WHERE NOT done;
