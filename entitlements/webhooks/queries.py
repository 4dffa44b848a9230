"""Every SQL statement of outgoing webhooks. The events themselves are written by triggers
(migrations/0011_webhooks.sql) in the transaction of their effect; nothing here writes one."""

_ENDPOINT_COLUMNS = """
    id, url, description, event_types, status, disabled_reason, disabled_at,
    CASE WHEN previous_secret_expires_at > now() THEN previous_secret_expires_at END AS previous_secret_expires_at,
    created_at
"""

COUNT_LIVE_ENDPOINTS = "SELECT count(*) FROM webhook_endpoints WHERE status <> 'removed'"

INSERT_ENDPOINT = f"""
INSERT INTO webhook_endpoints (url, description, event_types, secret, created_by)
VALUES ($1, $2, $3::text[], $4, $5)
RETURNING {_ENDPOINT_COLUMNS}
"""

LIST_ENDPOINTS = f"""
SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints
WHERE status <> 'removed' AND ($1::bigint IS NULL OR id > $1) ORDER BY id LIMIT $2
"""

ENDPOINT = f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1 AND status <> 'removed'"

# Removed endpoints keep their row (attempts name it); what they still had to send is cancelled.
REMOVE_ENDPOINT = """
WITH removed AS (
    UPDATE webhook_endpoints SET status = 'removed', disabled_at = NULL, updated_at = now()
    WHERE id = $1 AND status <> 'removed' RETURNING id
), cancelled AS (
    UPDATE webhook_deliveries SET status = 'cancelled', lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
    WHERE endpoint_id IN (SELECT id FROM removed) AND status = 'pending'
)
SELECT count(*) FROM removed
"""

ROTATE_SECRET = f"""
UPDATE webhook_endpoints
SET previous_secret = secret, previous_secret_expires_at = now() + $3 * interval '1 second', secret = $2,
    updated_at = now()
WHERE id = $1 AND status <> 'removed'
RETURNING {_ENDPOINT_COLUMNS}
"""

# Enabling again resumes every queue where it stopped: the attempts start over.
ENABLE_ENDPOINT = f"""
WITH enabled AS (
    UPDATE webhook_endpoints SET status = 'enabled', disabled_reason = NULL, disabled_at = NULL, updated_at = now()
    WHERE id = $1 AND status <> 'removed'
    RETURNING {_ENDPOINT_COLUMNS}
), resumed AS (
    UPDATE webhook_deliveries SET attempts = 0, next_attempt_at = now(), updated_at = now()
    WHERE endpoint_id IN (SELECT id FROM enabled) AND status = 'pending'
)
SELECT * FROM enabled
"""

DISABLE_ENDPOINT = """
UPDATE webhook_endpoints SET status = 'disabled', disabled_reason = $2, disabled_at = now(), updated_at = now()
WHERE id = $1 AND status = 'enabled'
"""

ATTEMPTS = """
SELECT id, event_id, attempt, status_code, latency_ms, error, delivered, attempted_at
FROM webhook_attempts
WHERE endpoint_id = $1 AND ($2::bigint IS NULL OR id < $2)
ORDER BY id DESC LIMIT $3
"""

_EVENT_COLUMNS = "e.id, e.type, e.user_id, e.sequence, e.created_at, e.data::text AS data"

USER_EVENTS = f"""
SELECT {_EVENT_COLUMNS} FROM webhook_events e
WHERE e.user_id = $1 AND e.sequence > $2 ORDER BY e.sequence LIMIT $3
"""

# Every user's events in commit order (ledger/feed.py's rule): only below this snapshot's horizon.
EVENTS_IN_COMMIT_ORDER = f"""
SELECT {_EVENT_COLUMNS}, e.written_by_xid::text::numeric AS xid FROM webhook_events e
WHERE e.written_by_xid < (SELECT pg_snapshot_xmin(pg_current_snapshot()))
  AND (e.written_by_xid, e.id) > ($1::text::xid8, $2::bigint)
ORDER BY e.written_by_xid, e.id
LIMIT $3
"""

EVENT_EXISTS = "SELECT type FROM webhook_events WHERE id = $1 AND sequence IS NOT NULL"

# Queued again for every enabled endpoint subscribed to its type: a delivered one goes back to pending
# (it is then the head of its queue, since its sequence is lower), a missing one is created.
REDELIVER = """
INSERT INTO webhook_deliveries (endpoint_id, event_id, user_id, sequence)
SELECT w.id, e.id, e.user_id, e.sequence
FROM webhook_events e JOIN webhook_endpoints w ON w.status = 'enabled' AND e.type = ANY (w.event_types)
WHERE e.id = $1
ORDER BY w.id
ON CONFLICT (endpoint_id, event_id) DO UPDATE
SET status = 'pending', attempts = 0, next_attempt_at = now(), delivered_at = NULL, updated_at = now()
RETURNING endpoint_id
"""

# The deliverer's claim: due deliveries that head their (endpoint, user) queue (no earlier one pending)
# and that nobody holds, taken with a lease. A queue's later deliveries wait while its head is pending, so
# per endpoint and user one delivery is in flight at a time, in sequence order. Due ones are read in
# next_attempt_at order and each is probed for an earlier one, so a claim reads about `limit` rows times
# the deliveries per queue, not the whole backlog. The conditions on `d` are checked again on the locked
# row (READ COMMITTED re-reads a row changed since the snapshot), so two claimers never both win.
CLAIM = """
WITH due AS (
    SELECT d.endpoint_id, d.event_id
    FROM webhook_deliveries d JOIN webhook_endpoints w ON w.id = d.endpoint_id AND w.status = 'enabled'
    WHERE d.status = 'pending' AND d.next_attempt_at <= now()
      AND (d.lease_expires_at IS NULL OR d.lease_expires_at <= now())
      AND NOT EXISTS (
          SELECT 1 FROM webhook_deliveries earlier
          WHERE earlier.endpoint_id = d.endpoint_id AND earlier.user_id = d.user_id
            AND earlier.status = 'pending' AND earlier.sequence < d.sequence
      )
    ORDER BY d.next_attempt_at
    LIMIT $1
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE webhook_deliveries d
SET lease_owner = $2, lease_expires_at = now() + $3 * interval '1 second', attempts = d.attempts + 1,
    updated_at = now()
FROM due, webhook_events e, webhook_endpoints w
WHERE d.endpoint_id = due.endpoint_id AND d.event_id = due.event_id AND e.id = d.event_id AND w.id = d.endpoint_id
RETURNING d.endpoint_id, d.event_id, d.event_id AS id, d.attempts, w.url, w.secret,
          CASE WHEN w.previous_secret_expires_at > now() THEN w.previous_secret END AS previous_secret,
          e.type, e.user_id, e.sequence, e.created_at, e.data::text AS data
"""

# Attempts' ends, many in one statement: every attempt is kept; a delivery changes only while the lease is
# still the recorder's (a lapsed lease means another deliverer has it). Answers the deliveries changed.
RECORD_ATTEMPTS = """
WITH ended AS (
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::int[], $4::int[], $5::int[], $6::text[], $7::bool[],
                         $8::float8[])
        AS ended (endpoint_id, event_id, attempt, status_code, latency_ms, error, delivered, wait_s)
), attempts AS (
    INSERT INTO webhook_attempts (endpoint_id, event_id, attempt, status_code, latency_ms, error, delivered, deliverer)
    SELECT endpoint_id, event_id, attempt, status_code, latency_ms, error, delivered, $9 FROM ended
)
UPDATE webhook_deliveries d
SET status = CASE WHEN ended.delivered THEN 'delivered' ELSE 'pending' END,
    delivered_at = CASE WHEN ended.delivered THEN now() END,
    next_attempt_at = now() + ended.wait_s * interval '1 second',
    last_status_code = ended.status_code, last_error = ended.error,
    lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
FROM ended
WHERE d.endpoint_id = ended.endpoint_id AND d.event_id = ended.event_id AND d.lease_owner = $9 AND d.status = 'pending'
RETURNING d.endpoint_id, d.event_id
"""

# What /metrics shows: how far behind delivery is, and which endpoints are disabled.
BACKLOG = """
SELECT count(*) AS pending,
       coalesce(extract(epoch FROM now() - min(e.sequenced_at)), 0)::float8 AS oldest_pending_s
FROM webhook_deliveries d
JOIN webhook_endpoints w ON w.id = d.endpoint_id AND w.status = 'enabled'
JOIN webhook_events e ON e.id = d.event_id
WHERE d.status = 'pending'
"""
ENDPOINTS_BY_STATUS = "SELECT status, count(*) AS n FROM webhook_endpoints WHERE status <> 'removed' GROUP BY status"

# The console's page: every endpoint with what it still has to send and its last attempt.
OVERVIEW = f"""
SELECT {_ENDPOINT_COLUMNS},
       (SELECT count(*) FROM webhook_deliveries d WHERE d.endpoint_id = w.id AND d.status = 'pending') AS pending,
       a.attempted_at AS last_attempt_at, a.status_code AS last_status, a.error AS last_error,
       a.delivered AS last_delivered
FROM webhook_endpoints w
LEFT JOIN LATERAL (
    SELECT attempted_at, status_code, error, delivered FROM webhook_attempts
    WHERE endpoint_id = w.id ORDER BY id DESC LIMIT 1
) a ON true
WHERE w.status <> 'removed'
ORDER BY w.status = 'enabled', w.id
LIMIT $1
"""
