"""What a rate-limit decision tells the client, from the key's state the database returns: the remaining
requests, the seconds until the burst is whole, and a refusal's Retry-After (pure arithmetic, no database).
The state itself is checked against PostgreSQL in tests/integration/entitlements/limits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from entitlements.limits import Policy, decide, policies
from entitlements.settings import RateLimitSettings

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def after(policy: Policy, requests: int) -> datetime:
    """The state after `requests` allowed at NOW from a full allowance: one interval each."""
    return NOW + timedelta(microseconds=policy.interval_us * requests)


def test_a_fresh_key_has_its_whole_burst() -> None:
    policy = Policy("reads", per_s=10.0, burst=5)
    decision = decide(policy, tat=None, now=NOW, allowed=True, replayed=True)
    assert (decision.remaining, decision.reset_s, decision.retry_after_s) == (5, 0, 0)


@pytest.mark.parametrize("used", [1, 2, 3, 4, 5])
def test_each_allowed_request_takes_one_from_the_burst(used: int) -> None:
    policy = Policy("reads", per_s=1.0, burst=5)
    decision = decide(policy, tat=after(policy, used), now=NOW, allowed=True, replayed=False)
    assert decision.remaining == 5 - used
    assert decision.reset_s == used  # one second per request at one a second


def test_a_refusal_says_when_to_come_back() -> None:
    policy = Policy("writes", per_s=0.25, burst=2)  # a request every 4 s, two at once
    decision = decide(policy, tat=after(policy, 2), now=NOW, allowed=False, replayed=False)
    assert decision.remaining == 0
    assert decision.retry_after_s == 4  # the state is 8 s ahead, the tolerance 4 s
    assert decision.reset_s == 8
    assert dict(decision.headers())[b"retry-after"] == b"4"


def test_retry_after_is_never_below_one_second() -> None:
    policy = Policy("reads", per_s=1000.0, burst=1)
    decision = decide(policy, tat=NOW + timedelta(microseconds=1500), now=NOW, allowed=False, replayed=False)
    assert decision.retry_after_s == 1


def test_the_headers_follow_the_draft() -> None:
    policy = Policy("generations", per_s=20.0, burst=100)
    decision = decide(policy, tat=after(policy, 1), now=NOW, allowed=True, replayed=False)
    assert decision.headers() == [
        (b"ratelimit-policy", b'"generations";q=100;w=5'),
        (b"ratelimit", b'"generations";r=99;t=1'),
    ]


@given(per_s=st.floats(min_value=0.001, max_value=100_000), burst=st.integers(min_value=1, max_value=100_000))
def test_the_policy_window_is_the_time_a_burst_takes_to_refill(per_s: float, burst: int) -> None:
    policy = Policy("reads", per_s=per_s, burst=burst)
    # The interval is the rate's, to the microsecond PostgreSQL keeps.
    assert abs(policy.interval_us - 1_000_000 / per_s) <= 0.5
    refill_us = policy.interval_us * burst
    assert policy.window_s >= 1
    assert policy.window_s * 1_000_000 >= refill_us
    assert policy.window_s == 1 or (policy.window_s - 1) * 1_000_000 < refill_us


@given(
    per_s=st.floats(min_value=0.01, max_value=1000),
    burst=st.integers(min_value=1, max_value=1000),
    used=st.integers(min_value=0, max_value=1000),
)
def test_remaining_is_never_negative_nor_above_the_burst(per_s: float, burst: int, used: int) -> None:
    policy = Policy("reads", per_s=per_s, burst=burst)
    decision = decide(policy, tat=after(policy, used), now=NOW, allowed=used <= burst, replayed=False)
    assert 0 <= decision.remaining <= burst
    if used <= burst:
        assert decision.remaining == burst - used


def _settings(**changes: object) -> RateLimitSettings:
    base = dict(
        enabled=True,
        generations_per_s=1.0,
        generations_burst=1,
        writes_per_s=2.0,
        writes_burst=2,
        reads_per_s=0.0,
        reads_burst=3,
    )
    return RateLimitSettings(**(base | changes))  # type: ignore[arg-type]


def test_a_class_without_a_rate_is_not_limited_and_off_is_off() -> None:
    assert set(policies(_settings())) == {"generations", "writes"}
    assert policies(_settings(enabled=False)) == {}


def test_a_lease_counts_the_intervals_it_moved_the_state_on() -> None:
    from entitlements.limits import granted_requests

    policy = Policy("reads", per_s=10.0, burst=100)
    # A fresh key (no state before): from now.
    assert granted_requests(policy, before=None, tat=after(policy, 8), now=NOW) == 8
    # A key whose state lies ahead of now: from that state, not from now.
    assert granted_requests(policy, before=after(policy, 3), tat=after(policy, 7), now=NOW) == 4
    # A key caught up long ago: from now.
    assert granted_requests(policy, before=NOW - timedelta(hours=1), tat=after(policy, 5), now=NOW) == 5
