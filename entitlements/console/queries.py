"""Every SQL statement of the console: its sessions."""

INSERT_SESSION = """
INSERT INTO console_sessions (token_hash, key_id, csrf_token, expires_at)
VALUES ($1, $2, $3, now() + make_interval(secs => $4))
RETURNING created_at, expires_at
"""

# One round trip per page: the session and its key (a revoked key's sessions are found no more), whether
# it is still live (idle for less than $2 s, younger than $3 s and its own absolute expiry), and, at most
# once per $4 s, the touch that keeps it from idling out.
FIND_SESSION = """
WITH found AS (
    SELECT s.token_hash, s.csrf_token, s.created_at, s.last_seen_at, s.expires_at, k.id AS key_id, k.name, k.role,
           s.expires_at > now() AND s.created_at > now() - make_interval(secs => $3)
               AND s.last_seen_at > now() - make_interval(secs => $2) AS live
    FROM console_sessions s JOIN api_keys k ON k.id = s.key_id
    WHERE s.token_hash = $1 AND s.ended_at IS NULL AND k.revoked_at IS NULL
), touched AS (
    UPDATE console_sessions s SET last_seen_at = now()
    FROM found
    WHERE s.token_hash = found.token_hash AND found.live AND found.last_seen_at < now() - make_interval(secs => $4)
    RETURNING s.token_hash
)
SELECT key_id, name, role, csrf_token, created_at, expires_at, live FROM found
"""

END_SESSION = "UPDATE console_sessions SET ended_at = now() WHERE token_hash = $1 AND ended_at IS NULL"

# Sessions over for a day are of no use to anyone: removed by the sweeper, a bounded batch at a time.
PURGE_SESSIONS = """
DELETE FROM console_sessions WHERE token_hash IN (
    SELECT token_hash FROM console_sessions
    WHERE expires_at < now() - interval '1 day' OR ended_at < now() - interval '1 day'
       OR last_seen_at < now() - make_interval(secs => $1) - interval '1 day'
    LIMIT $2
)
"""
