-- The support console's sessions, support's daily goodwill totals, and approvals (four eyes on large
-- grants and refunds). See entitlements/console/ and entitlements/approvals/.

-- A signed-in console session: an API key exchanged for a random token kept in an HttpOnly cookie.
-- Only the token's SHA-256 is stored (like API keys), so a copy of this table signs nobody in. The
-- key is read again on every request (a revoked key ends its sessions at once, and its role is the
-- key's role now). `csrf_token` is the synchronizer token every form of the session carries; it is no
-- credential by itself (it is printed into every page).
CREATE TABLE console_sessions (
    token_hash bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    key_id bigint NOT NULL REFERENCES api_keys (id),
    csrf_token text NOT NULL CHECK (length(csrf_token) BETWEEN 32 AND 128),
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Idle expiry counts from here; touched by every request (at most once per few seconds).
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    -- Absolute expiry: fixed when the session starts, however busy it is.
    expires_at timestamptz NOT NULL,
    -- Set by signing out; an ended session never comes back.
    ended_at timestamptz,
    CHECK (expires_at > created_at)
);
CREATE INDEX console_sessions_key ON console_sessions (key_id);
-- The sweep of old sessions reads by expiry.
CREATE INDEX console_sessions_expires ON console_sessions (expires_at);

-- What each support person (an API key's name: rotation keeps it) has granted, per UTC day. One row
-- per person and day, updated by the grant's own transaction in one statement that also checks the
-- daily total, so concurrent grants cannot pass it together.
CREATE TABLE support_grant_days (
    person text NOT NULL CHECK (length(person) BETWEEN 1 AND 200),
    day date NOT NULL,
    granted_moments bigint NOT NULL CHECK (granted_moments >= 0),
    PRIMARY KEY (person, day)
);

-- A grant or refund above the approval threshold, waiting for (or decided by) a second person.
CREATE TABLE approvals (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('grant', 'refund')),
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'approved', 'rejected')),
    user_id text NOT NULL CHECK (length(user_id) BETWEEN 1 AND 200),
    -- The refunded generation (refunds only).
    generation_id uuid,
    -- The grant's moments, or the refund's (NULL: whatever is still charged when approved).
    moments bigint CHECK (moments > 0),
    category text CHECK (category IN ('paid', 'subscription', 'promotional')),
    grant_expires_at timestamptz,
    reason text NOT NULL CHECK (length(reason) BETWEEN 1 AND 1000),
    requested_by_key_id bigint NOT NULL REFERENCES api_keys (id),
    -- The requester as the ledger records actors (`key:{id}:{name}`), and the person (the key's name)
    -- who may not decide their own request.
    requested_by text NOT NULL,
    requested_by_person text NOT NULL,
    -- The UTC day whose daily total the request counted against (grants by support only).
    counted_day date,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    decided_by_key_id bigint REFERENCES api_keys (id),
    decided_by text,
    decided_by_person text,
    decided_at timestamptz,
    decision_reason text CHECK (length(decision_reason) BETWEEN 1 AND 1000),
    -- The ledger transaction an approval made.
    transaction_id bigint,
    CHECK ((kind = 'grant') = (generation_id IS NULL)),
    CHECK (kind <> 'grant' OR (moments IS NOT NULL AND category IS NOT NULL)),
    CHECK ((status = 'pending') = (decided_at IS NULL)),
    CHECK ((status = 'pending') = (decided_by IS NULL)),
    CHECK ((status = 'approved') = (transaction_id IS NOT NULL)),
    -- Four eyes: the database refuses a decision by the requester too.
    CHECK (decided_by_person IS NULL OR decided_by_person <> requested_by_person),
    CHECK (expires_at > created_at)
);
CREATE INDEX approvals_pending ON approvals (id) WHERE status = 'pending';
CREATE INDEX approvals_user ON approvals (user_id, id);
CREATE INDEX approvals_transaction ON approvals (transaction_id) WHERE transaction_id IS NOT NULL;

-- A decided approval stays decided: only pending → approved or pending → rejected, once.
CREATE FUNCTION approvals_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status <> 'pending' THEN
        RAISE EXCEPTION 'approval % is already %', OLD.id, OLD.status USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.kind <> OLD.kind OR NEW.user_id <> OLD.user_id OR NEW.generation_id IS DISTINCT FROM OLD.generation_id
       OR NEW.moments IS DISTINCT FROM OLD.moments OR NEW.requested_by_person <> OLD.requested_by_person
       OR NEW.reason <> OLD.reason THEN
        RAISE EXCEPTION 'approval % may not change what was requested', OLD.id USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER approvals_guard BEFORE UPDATE ON approvals FOR EACH ROW EXECUTE FUNCTION approvals_guard();
CREATE TRIGGER approvals_no_delete BEFORE DELETE ON approvals FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
