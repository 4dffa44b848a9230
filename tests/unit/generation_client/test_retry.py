"""backoff_delay_s: exponential with full jitter, capped (pure)."""

from __future__ import annotations

import random

import pytest

from generation_client.retry import backoff_delay_s

BASE_S = 0.5
CAP_S = 30.0


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 8, 20, 1_000, 10**9])
def test_delay_within_zero_and_the_exponential_ceiling(attempt: int) -> None:
    rng = random.Random(attempt)
    ceiling_s = min(CAP_S, BASE_S * 2 ** min(attempt - 1, 62))
    for _ in range(500):
        delay_s = backoff_delay_s(attempt, base_s=BASE_S, cap_s=CAP_S, rng=rng)
        assert 0.0 <= delay_s <= ceiling_s


def test_first_retry_never_waits_longer_than_base() -> None:
    rng = random.Random(1)
    assert max(backoff_delay_s(1, base_s=BASE_S, cap_s=CAP_S, rng=rng) for _ in range(1_000)) <= BASE_S


def test_cap_reached_and_never_exceeded() -> None:
    rng = random.Random(2)
    delays_s = [backoff_delay_s(30, base_s=BASE_S, cap_s=CAP_S, rng=rng) for _ in range(2_000)]
    assert max(delays_s) <= CAP_S
    # Full jitter over [0, cap]: some draws land near the cap, some near zero.
    assert max(delays_s) > 0.9 * CAP_S
    assert min(delays_s) < 0.1 * CAP_S


def test_ceiling_doubles_per_attempt_until_the_cap() -> None:
    # Full jitter means the mean is half the ceiling; the ceiling doubles until it meets the cap.
    rng = random.Random(3)
    means_s = []
    for attempt in range(1, 9):
        delays_s = [backoff_delay_s(attempt, base_s=BASE_S, cap_s=CAP_S, rng=rng) for _ in range(4_000)]
        means_s.append(sum(delays_s) / len(delays_s))
    for attempt, mean_s in enumerate(means_s, start=1):
        expected_mean_s = min(CAP_S, BASE_S * 2 ** (attempt - 1)) / 2
        assert mean_s == pytest.approx(expected_mean_s, rel=0.1)


def test_same_seed_same_delays() -> None:
    first = [backoff_delay_s(n, base_s=BASE_S, cap_s=CAP_S, rng=random.Random(7)) for n in range(1, 10)]
    second = [backoff_delay_s(n, base_s=BASE_S, cap_s=CAP_S, rng=random.Random(7)) for n in range(1, 10)]
    assert first == second


@pytest.mark.parametrize(
    ("attempt", "base_s", "cap_s"),
    [(0, BASE_S, CAP_S), (-1, BASE_S, CAP_S), (1, 0.0, CAP_S), (1, -1.0, CAP_S), (1, 2.0, 1.0)],
)
def test_invalid_arguments_rejected(attempt: int, base_s: float, cap_s: float) -> None:
    with pytest.raises(ValueError, match=r"attempt|base_s|cap_s"):
        backoff_delay_s(attempt, base_s=base_s, cap_s=cap_s, rng=random.Random(0))
