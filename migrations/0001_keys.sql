-- API keys: only a SHA-256 of the raw key is stored. Keys are 256-bit random secrets, so a fast hash
-- is enough (no password stretching needed) and lets each request find its key by an index lookup.
CREATE TABLE api_keys (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    role text NOT NULL CHECK (role IN ('service', 'support', 'finance', 'admin')),
    key_hash bytea NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    -- The first characters of the raw key, safe to show, so people can tell keys apart.
    key_prefix text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Stamped at most once a minute per key (see entitlements/keys/queries.py), not on every request.
    last_used_at timestamptz,
    -- Set once; a revoked key is refused by every process from its next request on.
    revoked_at timestamptz
);
