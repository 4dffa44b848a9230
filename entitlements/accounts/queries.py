"""Every SQL statement of accounts (the ledger's own reads and writes go through `ledger.Ledger`)."""

# Adds a support person's grant to their total of the UTC day, unless that would pass the daily total
# ($3): one statement both checks and counts, under the row's lock, so concurrent grants cannot pass the
# total together. No row back: refused.
COUNT_DAILY_GRANT = """
INSERT INTO support_grant_days AS d (person, day, granted_moments)
SELECT $1, (now() AT TIME ZONE 'UTC')::date, $2::bigint WHERE $2::bigint <= $3::bigint
ON CONFLICT (person, day) DO UPDATE SET granted_moments = d.granted_moments + excluded.granted_moments
WHERE d.granted_moments + excluded.granted_moments <= $3::bigint
RETURNING day, granted_moments
"""

GRANTED_TODAY = """
SELECT coalesce((SELECT granted_moments FROM support_grant_days
                 WHERE person = $1 AND day = (now() AT TIME ZONE 'UTC')::date), 0)
"""

# A rejected request gives its moments back to the day it was counted against.
RELEASE_DAILY_GRANT = """
UPDATE support_grant_days SET granted_moments = greatest(granted_moments - $3, 0) WHERE person = $1 AND day = $2
"""
