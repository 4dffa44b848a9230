"""Rate limits per API key and endpoint class: the generic cell rate algorithm, state in PostgreSQL.

Each class has a rate (requests per second) and a burst (how many may come at once after a quiet spell).
The state is one timestamp per key and class in an UNLOGGED table, changed by one statement per request
(queries.CHECK), so the limit holds across any number of API processes and hosts. What a response says
about it follows the IETF draft `RateLimit` header fields: the policy is the burst over the seconds it
takes to come back whole (`q`, `w`); the current state is what remains now (`r`) and the seconds until
the whole burst is back (`t`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from entitlements.errors import DomainError
from entitlements.limits import queries
from entitlements.settings import RateLimitSettings

# Creating a generation (it holds moments and queues accelerator work), other requests that change
# something, and reads (including quotes and advice, which compute but change nothing).
ENDPOINT_CLASSES = ("generations", "writes", "reads")
MICROSECONDS_PER_S = 1_000_000


class RateLimited(DomainError):
    code = "rate_limited"


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    per_s: float
    burst: int

    # Whole microseconds, as PostgreSQL keeps time: the database and this arithmetic then agree exactly,
    # however many intervals a state has added up.
    @property
    def interval_us(self) -> int:
        """The emission interval: one request's share of a second."""
        return max(1, round(MICROSECONDS_PER_S / self.per_s))

    @property
    def tolerance_us(self) -> int:
        """How far ahead of now the state may be and still allow a request: burst - 1 intervals."""
        return self.interval_us * (self.burst - 1)

    @property
    def window_s(self) -> int:
        """Seconds an exhausted burst takes to come back whole (the policy's `w`)."""
        return max(1, -(-self.interval_us * self.burst // MICROSECONDS_PER_S))

    def header(self) -> str:
        return f'"{self.name}";q={self.burst};w={self.window_s}'


@dataclass(frozen=True, slots=True)
class Decision:
    policy: Policy
    allowed: bool
    # Requests that would be allowed right now, after this one.
    remaining: int
    # Seconds until the whole burst is back.
    reset_s: int
    # Seconds until a denied request would be allowed (0 when allowed).
    retry_after_s: int
    replayed: bool

    def headers(self) -> list[tuple[bytes, bytes]]:
        state = f'"{self.policy.name}";r={self.remaining};t={self.reset_s}'
        found = [(b"ratelimit-policy", self.policy.header().encode()), (b"ratelimit", state.encode())]
        if not self.allowed:
            found.append((b"retry-after", str(self.retry_after_s).encode()))
        return found


def policies(settings: RateLimitSettings) -> dict[str, Policy]:
    """The limited classes (a class with no rate, or every class when limits are off, is not limited)."""
    if not settings.enabled:
        return {}
    configured = {
        "generations": (settings.generations_per_s, settings.generations_burst),
        "writes": (settings.writes_per_s, settings.writes_burst),
        "reads": (settings.reads_per_s, settings.reads_burst),
    }
    return {name: Policy(name, per_s, burst) for name, (per_s, burst) in configured.items() if per_s > 0}


def decide(policy: Policy, *, tat: datetime | None, now: datetime, allowed: bool, replayed: bool) -> Decision:
    """What the database's answer means for the client: `tat` is the key's state after the check."""
    ahead_us = max(0, (tat - now) // timedelta(microseconds=1)) if tat is not None else 0
    remaining = (policy.tolerance_us - ahead_us) // policy.interval_us + 1
    retry_after_s = 0 if allowed else max(1, _ceil_s(ahead_us - policy.tolerance_us))
    return Decision(
        policy=policy,
        allowed=allowed,
        remaining=min(policy.burst, max(0, remaining)),
        reset_s=_ceil_s(ahead_us),
        retry_after_s=retry_after_s,
        replayed=replayed,
    )


def _ceil_s(microseconds: int) -> int:
    return max(0, -(-microseconds // MICROSECONDS_PER_S))


async def check(pool: asyncpg.Pool, policy: Policy, *, key_id: int, idempotency_key: str | None) -> Decision:
    """Counts one request of the key against the class (unless it replays a stored answer)."""
    row = await pool.fetchrow(
        queries.CHECK,
        key_id,
        policy.name,
        timedelta(microseconds=policy.interval_us),
        timedelta(microseconds=policy.tolerance_us),
        idempotency_key,
    )
    assert row is not None
    return decide(policy, tat=row["tat"], now=row["now"], allowed=row["allowed"], replayed=row["replayed"])
