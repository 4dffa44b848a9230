"""Every SQL statement of generations and their jobs.

A generation's money side is its hold; its columns are read through `ledger_holds` (the ledger's hold
state: status, amount, captured, refunded, expiry), never written here.
"""

GENERATION_COLUMNS = """
    g.id, g.user_id, g.image_id, g.prompt, g.mode, g.resolution, g.duration_s, g.audio, g.moments,
    g.price_version, g.status, g.error, g.hold_id, g.video_path, g.created_at, g.updated_at,
    h.status AS hold_status, h.amount AS hold_amount, h.captured AS hold_captured, h.refunded AS hold_refunded,
    h.expires_at AS hold_expires_at
"""
GENERATION_FROM = "FROM generations g JOIN ledger_holds h ON h.id = g.hold_id"

FETCH = f"SELECT {GENERATION_COLUMNS} {GENERATION_FROM} WHERE g.id = $1"
FETCH_FOR_UPDATE = f"{FETCH} FOR UPDATE OF g"

LIST_FOR_USER = f"""
SELECT {GENERATION_COLUMNS} {GENERATION_FROM}
WHERE g.user_id = $1 AND ($2::text IS NULL OR g.image_id = $2)
  AND ($3::timestamptz IS NULL OR (g.created_at, g.id) < ($3, $4::uuid))
ORDER BY g.created_at DESC, g.id DESC
LIMIT $5
"""

# A user's generations that still hold moments: the user's newest-first index, filtered (there are few).
OPEN_HOLDS_OF_USER = f"""
SELECT {GENERATION_COLUMNS} {GENERATION_FROM}
WHERE g.user_id = $1 AND g.status IN ('queued', 'running') AND h.status = 'open'
ORDER BY g.created_at DESC, g.id DESC
LIMIT $2
"""

USER_OF_GENERATION = "SELECT user_id FROM generations WHERE id = $1"
HOLD_IDS = "SELECT id, hold_id FROM generations WHERE id = ANY($1::uuid[])"

INSERT_GENERATION = """
INSERT INTO generations (id, user_id, image_id, prompt, mode, resolution, duration_s, audio, moments,
                         price_version, status, hold_id, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'queued', $11, $12, $12)
"""
INSERT_JOB = "INSERT INTO generation_jobs (generation_id) VALUES ($1)"

MARK_SUCCEEDED = """
UPDATE generations SET status = 'succeeded', video_path = $2, video_bytes = $3, updated_at = now() WHERE id = $1
"""
MARK_FAILED = "UPDATE generations SET status = 'failed', error = $2, updated_at = now() WHERE id = $1"
MARK_RUNNING = "UPDATE generations SET status = 'running', updated_at = now() WHERE id = $1 AND status = 'queued'"
MARK_REFUNDED = "UPDATE generations SET status = 'refunded', updated_at = now() WHERE id = $1"
TOUCH = "UPDATE generations SET updated_at = now() WHERE id = $1"

FINISH_JOB = """
UPDATE generation_jobs SET done = true, lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
WHERE generation_id = $1 AND NOT done
"""

CLAIM_JOBS = """
UPDATE generation_jobs AS job
SET lease_owner = $1, lease_expires_at = now() + make_interval(secs => $2), updated_at = now()
FROM (
    SELECT generation_id FROM generation_jobs
    WHERE NOT done AND run_after <= now() AND (lease_expires_at IS NULL OR lease_expires_at < now())
    ORDER BY run_after
    LIMIT $3
    FOR UPDATE SKIP LOCKED
) AS due
WHERE job.generation_id = due.generation_id
RETURNING job.generation_id, job.attempts, job.first_submitted_at
"""

RENEW_LEASE = """
UPDATE generation_jobs SET lease_expires_at = now() + make_interval(secs => $3), updated_at = now()
WHERE generation_id = $1 AND lease_owner = $2 AND NOT done
RETURNING true
"""

MARK_SUBMITTED = """
UPDATE generation_jobs SET first_submitted_at = coalesce(first_submitted_at, now())
WHERE generation_id = $1 RETURNING first_submitted_at
"""

RETRY_LATER = """
UPDATE generation_jobs
SET attempts = $2, run_after = now() + make_interval(secs => $3), last_error = $4,
    lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
WHERE generation_id = $1 AND lease_owner = $5 AND NOT done
"""

EXPIRED_GENERATIONS = """
SELECT g.id FROM generations g JOIN ledger_holds h ON h.id = g.hold_id
WHERE g.status IN ('queued', 'running') AND h.status = 'open' AND h.expires_at <= now()
ORDER BY h.expires_at
LIMIT $1
"""

# Every generation in a final state has exactly one settled hold, of the matching kind.
SETTLED_ONCE_VIOLATIONS = """
SELECT g.id, g.status, h.status AS hold_status, h.captured, h.refunded
FROM generations g JOIN ledger_holds h ON h.id = g.hold_id
WHERE (g.status IN ('queued', 'running') AND h.status <> 'open')
   OR (g.status IN ('succeeded', 'refunded') AND h.status <> 'captured')
   OR (g.status = 'refunded' AND h.refunded <> h.captured)
   OR (g.status = 'succeeded' AND h.refunded = h.captured)
   OR (g.status = 'failed' AND h.status NOT IN ('voided', 'expired'))
"""
