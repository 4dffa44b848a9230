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
