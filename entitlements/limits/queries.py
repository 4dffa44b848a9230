"""Every SQL statement of the rate limits."""

# Whether the request ($1 the key, $5 its Idempotency-Key) replays a stored answer: then nothing is counted.
_REPLAY = """WITH replay AS (
    SELECT EXISTS (
        SELECT FROM api_idempotency
        WHERE $5::text IS NOT NULL AND caller_key_id = $1 AND idempotency_key = $5 AND response_body IS NOT NULL
    ) AS stored
)"""

# One request's check, in one statement, whatever the number of processes: the generic cell rate
# algorithm on the key's row for the class. `tat` (theoretical arrival time) moves one emission interval
# ($3 µs) later for each request allowed; a request is allowed while `tat` is at most the tolerance
# ($4 µs: burst - 1 intervals) ahead of now. The upsert locks the row, so concurrent checks of one key
# queue on it and each sees the one before. A denied request leaves `tat` where it was (it is not
# counted). A request whose Idempotency-Key ($5) already has a stored answer is a replay: nothing is
# counted and the key's row is only read, for the headers.
CHECK = f"""
{_REPLAY}, counted AS (
    INSERT INTO rate_limits AS r (key_id, endpoint_class, tat, allowed)
    SELECT $1, $2, statement_timestamp() + $3::interval, true FROM replay WHERE NOT replay.stored
    ON CONFLICT (key_id, endpoint_class) DO UPDATE SET
        allowed = greatest(r.tat, statement_timestamp()) <= statement_timestamp() + $4::interval,
        tat = CASE WHEN greatest(r.tat, statement_timestamp()) <= statement_timestamp() + $4::interval
                   THEN greatest(r.tat, statement_timestamp()) + $3::interval
                   ELSE r.tat END
    RETURNING tat, allowed
)
SELECT coalesce(c.tat, (SELECT tat FROM rate_limits WHERE key_id = $1 AND endpoint_class = $2)) AS tat,
       coalesce(c.allowed, true) AS allowed, replay.stored AS replayed, statement_timestamp() AS now
FROM replay LEFT JOIN counted c ON true
"""

# A process's lease: up to $6 requests of the key's allowance for the class taken in one statement, so one
# write serves many requests (entitlements/limits/service.py, `Leases`). The same algorithm as CHECK, for
# `n` cells at once: as many as the allowance holds now (at least one, at most $6) move `tat` on by one
# interval each. `before` (PostgreSQL 18's RETURNING old) is the state the grant was taken from, so the
# caller can tell how many it got: (tat - greatest(before, now)) / interval. A replay takes nothing.
LEASE = f"""
{_REPLAY}, counted AS (
    INSERT INTO rate_limits AS r (key_id, endpoint_class, tat, allowed)
    SELECT $1, $2, statement_timestamp() + $3::interval * least($6::int, $7::int), true
    FROM replay WHERE NOT replay.stored
    ON CONFLICT (key_id, endpoint_class) DO UPDATE SET
        allowed = greatest(r.tat, statement_timestamp()) <= statement_timestamp() + $4::interval,
        tat = CASE WHEN greatest(r.tat, statement_timestamp()) <= statement_timestamp() + $4::interval
                   THEN greatest(r.tat, statement_timestamp()) + $3::interval * least(
                       $6::int,
                       floor(
                           extract(epoch FROM statement_timestamp() + $4::interval
                                              - greatest(r.tat, statement_timestamp()))
                           / extract(epoch FROM $3::interval)
                       )::int + 1)
                   ELSE r.tat END
    RETURNING old.tat AS before, new.tat AS tat, new.allowed AS allowed
)
SELECT coalesce(c.tat, (SELECT tat FROM rate_limits WHERE key_id = $1 AND endpoint_class = $2)) AS tat,
       c.before, coalesce(c.allowed, true) AS allowed, replay.stored AS replayed, statement_timestamp() AS now
FROM replay LEFT JOIN counted c ON true
"""

# One request given back to the key's allowance (a lease served a replay after it lapsed).
GIVE_BACK = "UPDATE rate_limits SET tat = tat - $3::interval WHERE key_id = $1 AND endpoint_class = $2"
