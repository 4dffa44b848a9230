"""Every SQL statement of generations and their jobs.

A generation's money side is its hold; its columns are read through `ledger_holds` (the ledger's hold
state: status, amount, captured, refunded, expiry), never written here.
"""

from entitlements.tiers import tier_expression

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

# What /metrics shows of the work in progress, through the index of unsettled generations (each holds its
# price until it settles, so these are also the open holds).
IN_PROGRESS = """
SELECT count(*) FILTER (WHERE status = 'queued') AS queued,
       count(*) FILTER (WHERE status = 'running') AS running,
       coalesce(sum(moments), 0) AS moments_held,
       coalesce(extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'queued')), 0)::float8
           AS oldest_queued_s
FROM generations WHERE status IN ('queued', 'running')
"""

USER_OF_GENERATION = "SELECT user_id FROM generations WHERE id = $1"
HOLD_IDS = "SELECT id, hold_id FROM generations WHERE id = ANY($1::uuid[])"

INSERT_GENERATION = """
INSERT INTO generations (id, user_id, image_id, prompt, mode, resolution, duration_s, audio, moments,
                         price_version, status, hold_id, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'queued', $11, $12, $12)
"""
INSERT_JOB = "INSERT INTO generation_jobs (generation_id) VALUES ($1)"

MARK_REFUNDED = "UPDATE generations SET status = 'refunded', updated_at = now() WHERE id = $1"
TOUCH = "UPDATE generations SET updated_at = now() WHERE id = $1"

FINISH_JOB = """
UPDATE generation_jobs SET done = true, lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
WHERE generation_id = $1 AND NOT done
"""

# Up to $3 due jobs leased at once, with what the worker needs of each generation (read, not locked: a
# settlement locks the generation before the job, so the claim must not lock them the other way round).
CLAIM_JOBS = """
WITH leased AS (
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
)
SELECT l.generation_id, l.attempts, l.first_submitted_at, g.user_id, g.hold_id, g.image_id, g.prompt,
       g.resolution, g.duration_s, g.audio, g.status
FROM leased l JOIN generations g ON g.id = l.generation_id
"""

MARK_RUNNING_MANY = """
UPDATE generations SET status = 'running', updated_at = now() WHERE id = ANY($1::uuid[]) AND status = 'queued'
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
SELECT g.id, g.user_id, g.hold_id FROM generations g JOIN ledger_holds h ON h.id = g.hold_id
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

# A batch of generation requests in the ledger's group commit (batch.py), two statements for the whole batch.
# The first claims every Idempotency-Key (in key order, so two batches never wait on each other in a cycle)
# and reads each user's tier for the gate: one round trip across the idempotency and tier tables.
CLAIM_AND_GATE = f"""
WITH wanted AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::bytea[], $4::text[])
        WITH ORDINALITY AS w(caller_key_id, idempotency_key, request_hash, user_id, position)
), claimed AS (
    INSERT INTO api_idempotency (caller_key_id, idempotency_key, operation, request_hash)
    SELECT caller_key_id, idempotency_key, 'create_generation', request_hash FROM wanted
    ORDER BY caller_key_id, idempotency_key
    ON CONFLICT DO NOTHING
    RETURNING caller_key_id, idempotency_key
)
SELECT w.position, c.idempotency_key IS NOT NULL AS claimed, {tier_expression("s.", "$5")} AS tier
FROM wanted w
LEFT JOIN claimed c USING (caller_key_id, idempotency_key)
LEFT JOIN subscriptions s ON s.user_id = w.user_id
ORDER BY w.position
"""

# The second writes what the batch did: the generations and their jobs, the stored answers, and drops the
# claims of requests that were refused (a refusal is not stored: the same key may try again).
WRITE_BATCH = """
WITH generation_rows AS (
    INSERT INTO generations (id, user_id, image_id, prompt, mode, resolution, duration_s, audio, moments,
                             price_version, status, hold_id, created_at, updated_at)
    SELECT id, user_id, image_id, prompt, mode, resolution, duration_s, audio, moments, price_version,
           'queued', hold_id, created_at, created_at
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int[], $8::bool[],
                $9::bigint[], $10::text[], $11::bigint[], $12::timestamptz[])
        AS g(id, user_id, image_id, prompt, mode, resolution, duration_s, audio, moments, price_version,
             hold_id, created_at)
    RETURNING id
), job_rows AS (
    INSERT INTO generation_jobs (generation_id) SELECT id FROM generation_rows
), answers AS (
    UPDATE api_idempotency a SET response_body = r.body::jsonb
    FROM unnest($13::bigint[], $14::text[], $15::text[]) AS r(caller_key_id, idempotency_key, body)
    WHERE a.caller_key_id = r.caller_key_id AND a.idempotency_key = r.idempotency_key
), refused AS (
    DELETE FROM api_idempotency a
    USING unnest($16::bigint[], $17::text[]) AS r(caller_key_id, idempotency_key)
    WHERE a.caller_key_id = r.caller_key_id AND a.idempotency_key = r.idempotency_key
)
SELECT count(*) FROM generation_rows
"""

# Settlements in the ledger's group commit (batch.py): the batch's generations locked in id order, then
# one statement for their final states and their jobs' end.
LOCK_FOR_SETTLEMENT = "SELECT id, status FROM generations WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE"

SETTLE_BATCH = """
WITH succeeded AS (
    UPDATE generations g SET status = 'succeeded', video_path = s.video_path, video_bytes = s.video_bytes,
                             updated_at = now()
    FROM unnest($1::uuid[], $2::text[], $3::bigint[]) AS s(id, video_path, video_bytes)
    WHERE g.id = s.id
), failed AS (
    UPDATE generations g SET status = 'failed', error = f.error, updated_at = now()
    FROM unnest($4::uuid[], $5::text[]) AS f(id, error)
    WHERE g.id = f.id
), jobs AS (
    UPDATE generation_jobs SET done = true, lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
    WHERE generation_id = ANY($6::uuid[]) AND NOT done
)
SELECT 1
"""
