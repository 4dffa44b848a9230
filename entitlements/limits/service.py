"""Rate limits per API key and endpoint class: the generic cell rate algorithm, state in PostgreSQL.

Each class has a rate (requests per second) and a burst (how many may come at once after a quiet spell).
The state is one timestamp per key and class in an UNLOGGED table, changed by one statement per request
(queries.CHECK), so the limit holds across any number of API processes and hosts. What a response says
about it follows the IETF draft `RateLimit` header fields: the policy is the burst over the seconds it
takes to come back whole (`q`, `w`); the current state is what remains now (`r`) and the seconds until
the whole burst is back (`t`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import asyncpg

from entitlements.errors import DomainError
from entitlements.limits import queries
from entitlements.settings import RateLimitSettings

# Creating a generation (it holds moments and queues accelerator work), other requests that change
# something, and reads (including quotes and advice, which compute but change nothing).
ENDPOINT_CLASSES = ("generations", "writes", "reads")
MICROSECONDS_PER_S = 1_000_000
# Requests one lease may take at most, whatever the rate: what one process can hold of a key's allowance
# that others then cannot use (until it lapses).
LEASE_REQUESTS_MAX = 64
# Leases kept per process before the lapsed ones are dropped.
LEASES_MAX = 10_000


class RateLimited(DomainError):
    code = "rate_limited"


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    per_s: float
    burst: int
    # Requests a process takes of the allowance per statement (1: every request checked in the database),
    # and how long it may keep them.
    lease_max: int = 1
    lease_s: float = 0.0

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
    # Served from this process's lease, not by a statement: a replay given back later (`Leases.give_back`).
    leased: bool = False

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
    return {
        name: Policy(name, per_s, burst, lease_max=lease_max(per_s, burst, settings.lease_s), lease_s=settings.lease_s)
        for name, (per_s, burst) in configured.items()
        if per_s > 0
    }


def lease_max(per_s: float, burst: int, lease_s: float) -> int:
    """A lease holds at most `lease_s` of the rate, an eighth of the burst and LEASE_REQUESTS_MAX: a key
    that may send a few requests a second is checked in the database on every one, as before."""
    return max(1, min(int(per_s * lease_s), burst // 8, LEASE_REQUESTS_MAX))


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


@dataclass(slots=True)
class _Lease:
    left: int
    lapses_at: float
    # The decision the lease was taken with: the headers of the requests it serves are derived from it.
    decision: Decision


class Leases:
    """One process's leases of keys' allowances, so that a busy key costs one statement per lease, not one
    per request. What it changes against `check` alone, per key and class:
    - never more allowed in all than the one row allows, plus what leases not yet lapsed still hold: at
      most `lease_max - 1` requests per process, each at most `lease_s` old;
    - the other processes may be refused up to that many sooner (what a lease holds, they cannot take);
    - a request a lease served that turns out to be answered from a stored record (a replay, or a key's
      409) is given back after it (`give_back`), so replays still use none of the allowance; while it
      runs, its request is held, so a concurrent request may be refused one sooner;
    - the headers' `r` adds what the lease still holds to the row's state when it was taken.
    A policy whose `lease_max` is 1 goes to `check` for every request, exactly as without leases."""

    def __init__(self) -> None:
        self._leases: dict[tuple[int, str], _Lease] = {}
        self._taking: dict[tuple[int, str], asyncio.Lock] = {}

    async def check(self, pool: asyncpg.Pool, policy: Policy, *, key_id: int, idempotency_key: str | None) -> Decision:
        if policy.lease_max <= 1:
            return await check(pool, policy, key_id=key_id, idempotency_key=idempotency_key)
        slot = (key_id, policy.name)
        served = self._serve(slot, policy)
        if served is not None:
            return served
        # One statement per key at a time: the callers that find the lease empty together share the next.
        lock = self._taking.setdefault(slot, asyncio.Lock())
        async with lock:
            served = self._serve(slot, policy)
            if served is not None:
                return served
            return await self._take(pool, policy, slot, idempotency_key)

    def _serve(self, slot: tuple[int, str], policy: Policy) -> Decision | None:
        lease = self._leases.get(slot)
        if lease is None or lease.left <= 0 or lease.lapses_at <= time.monotonic():
            return None
        lease.left -= 1
        remaining = min(policy.burst, lease.decision.remaining + lease.left)
        return replace(lease.decision, remaining=remaining, replayed=False, leased=True)

    async def _take(
        self, pool: asyncpg.Pool, policy: Policy, slot: tuple[int, str], idempotency_key: str | None
    ) -> Decision:
        taken_at = time.monotonic()
        row = await pool.fetchrow(
            queries.LEASE,
            slot[0],
            policy.name,
            timedelta(microseconds=policy.interval_us),
            timedelta(microseconds=policy.tolerance_us),
            idempotency_key,
            policy.lease_max,
            policy.burst,
        )
        assert row is not None
        decision = decide(policy, tat=row["tat"], now=row["now"], allowed=row["allowed"], replayed=row["replayed"])
        if row["replayed"] or not row["allowed"]:
            return decision
        granted = granted_requests(policy, before=row["before"], tat=row["tat"], now=row["now"])
        if len(self._leases) >= LEASES_MAX:
            self._drop_lapsed(taken_at)
        self._leases[slot] = _Lease(left=granted - 1, lapses_at=taken_at + policy.lease_s, decision=decision)
        return replace(decision, remaining=min(policy.burst, decision.remaining + granted - 1))

    async def give_back(self, pool: asyncpg.Pool, policy: Policy, *, key_id: int) -> None:
        """A request a lease served turned out to be answered from a stored record (a replay, or a key's
        409), which uses none of the allowance: back to the lease, or to the key's row if it lapsed."""
        lease = self._leases.get((key_id, policy.name))
        if lease is not None and lease.lapses_at > time.monotonic():
            lease.left += 1
            return
        await pool.execute(queries.GIVE_BACK, key_id, policy.name, timedelta(microseconds=policy.interval_us))

    def _drop_lapsed(self, now: float) -> None:
        for slot in [slot for slot, lease in self._leases.items() if lease.lapses_at <= now]:
            del self._leases[slot]
            lock = self._taking.get(slot)
            if lock is not None and not lock.locked():
                del self._taking[slot]


def granted_requests(policy: Policy, *, before: datetime | None, tat: datetime, now: datetime) -> int:
    """How many requests a lease got: each moved the state on by one interval from where it started (now,
    for a fresh or a caught-up key)."""
    start = now if before is None else max(before, now)
    return max(1, (tat - start) // timedelta(microseconds=policy.interval_us))
