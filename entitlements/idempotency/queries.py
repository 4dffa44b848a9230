"""Every SQL statement of API-level idempotency."""

CLAIM = """
INSERT INTO api_idempotency (caller_key_id, idempotency_key, operation, request_hash)
VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING true
"""

STORED = """
SELECT operation, request_hash, response_body FROM api_idempotency
WHERE caller_key_id = $1 AND idempotency_key = $2
"""

STORE = """
UPDATE api_idempotency SET response_body = $3
WHERE caller_key_id = $1 AND idempotency_key = $2
"""

# A batch's claims that someone else made first: their requests and answers, to replay or refuse.
STORED_MANY = """
SELECT a.caller_key_id, a.idempotency_key, a.operation, a.request_hash, a.response_body
FROM unnest($1::bigint[], $2::text[]) AS wanted(caller_key_id, idempotency_key)
JOIN api_idempotency a USING (caller_key_id, idempotency_key)
"""
