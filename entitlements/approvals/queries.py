"""Every SQL statement of approvals."""

# An approval past its expiry that nobody decided reads as `expired`: the database's clock decides.
_STATUS = "CASE WHEN status = 'pending' AND expires_at <= now() THEN 'expired' ELSE status END"
APPROVAL_COLUMNS = f"""
    id, kind, {_STATUS} AS status, user_id, generation_id, moments, category, grant_expires_at, reason,
    requested_by_key_id, requested_by, requested_by_person, counted_day, created_at, expires_at,
    decided_by, decided_at, decision_reason, transaction_id
"""

INSERT_APPROVAL = f"""
INSERT INTO approvals (kind, user_id, generation_id, moments, category, grant_expires_at, reason,
                       requested_by_key_id, requested_by, requested_by_person, counted_day, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, now() + make_interval(secs => $12))
RETURNING {APPROVAL_COLUMNS}
"""

FETCH_APPROVAL = f"SELECT {APPROVAL_COLUMNS} FROM approvals WHERE id = $1"
LOCK_APPROVAL = f"{FETCH_APPROVAL} FOR UPDATE"

DECIDE_APPROVAL = f"""
UPDATE approvals
SET status = $2, decided_by_key_id = $3, decided_by = $4, decided_by_person = $5, decided_at = now(),
    decision_reason = $6, transaction_id = $7
WHERE id = $1
RETURNING {APPROVAL_COLUMNS}
"""

# Newest first; `status` filters on the status as read (so `expired` and `pending` never overlap).
LIST_APPROVALS = f"""
SELECT {APPROVAL_COLUMNS} FROM approvals
WHERE ($1::text IS NULL
       OR ($1 = 'pending' AND status = 'pending' AND expires_at > now())
       OR ($1 = 'expired' AND status = 'pending' AND expires_at <= now())
       OR ($1 IN ('approved', 'rejected') AND status = $1))
  AND ($2::bigint IS NULL OR id < $2)
ORDER BY id DESC
LIMIT $3
"""

LIST_FOR_USER = f"""
SELECT {APPROVAL_COLUMNS} FROM approvals WHERE user_id = $1 ORDER BY id DESC LIMIT $2
"""

BY_TRANSACTIONS = f"""
SELECT {APPROVAL_COLUMNS} FROM approvals WHERE transaction_id = ANY($1::bigint[])
"""
