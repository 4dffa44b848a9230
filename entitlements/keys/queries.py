"""Every SQL statement of API keys."""

# Notified by a trigger on every change to a key row (migrations/0005); the payload is the key's id.
KEYS_CHANNEL = "moments_api_keys"
# Each listening process, once it has forgotten a changed key, says so here (the payload: the key's id), so
# the process that made the change can answer only once every listener has (keys/cache.py).
HEARD_CHANNEL = "moments_api_keys_heard"
ACKNOWLEDGE = "SELECT pg_notify($1, $2)"
# The processes listening now: their listener connections, by application_name, on this database.
COUNT_LISTENERS = """
SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1
"""

INSERT_KEY = """
INSERT INTO api_keys (name, role, key_hash, key_prefix) VALUES ($1, $2, $3, $4)
RETURNING id, name, role, key_prefix, created_at, last_used_at, revoked_at
"""

# One round trip per request: find the key and, at most once per `$2` seconds, stamp its use (so a busy
# key writes once a minute, not once a request).
FIND_CALLER = """
WITH found AS (
    SELECT id, name, role, last_used_at FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL
), stamped AS (
    UPDATE api_keys SET last_used_at = now()
    FROM found
    WHERE api_keys.id = found.id
      AND (found.last_used_at IS NULL OR found.last_used_at < now() - make_interval(secs => $2))
    RETURNING api_keys.id
)
SELECT id, name, role FROM found
"""

LIST_KEYS = """
SELECT id, name, role, key_prefix, created_at, last_used_at, revoked_at
FROM api_keys
WHERE ($1::bigint IS NULL OR id > $1)
ORDER BY id
LIMIT $2
"""

LOCK_KEY = """
SELECT id, name, role, key_prefix, created_at, last_used_at, revoked_at FROM api_keys WHERE id = $1 FOR UPDATE
"""

REVOKE_KEY = """
UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1
RETURNING id, name, role, key_prefix, created_at, last_used_at, revoked_at
"""

ROLE_OF_ACTIVE_KEY = "SELECT role FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL"
