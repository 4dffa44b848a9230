"""Backoff between retries of a worker call. Pure: the caller owns the loop, the clock and the rng."""

from __future__ import annotations

import random

# 2**ATTEMPT_EXPONENT_MAX already dwarfs any sane cap; clamping the exponent keeps the float finite
# for a caller that passes a huge attempt number.
ATTEMPT_EXPONENT_MAX = 62


def backoff_delay_s(attempt: int, *, base_s: float, cap_s: float, rng: random.Random) -> float:
    """The delay before retry number `attempt` (1 = the first retry), in seconds.

    Exponential with full jitter (uniform in [0, min(cap_s, base_s * 2**(attempt - 1))]): the jitter
    spreads out retries of many dispatchers that failed at the same moment, so they do not hit a
    recovering worker in lockstep. Never negative, never above `cap_s`.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    if base_s <= 0:
        raise ValueError(f"base_s must be > 0, got {base_s}")
    if cap_s < base_s:
        raise ValueError(f"cap_s must be >= base_s, got cap_s={cap_s} base_s={base_s}")
    exponent = min(attempt - 1, ATTEMPT_EXPONENT_MAX)
    ceiling_s = min(cap_s, base_s * float(2**exponent))
    delay_s = rng.uniform(0.0, ceiling_s)
    assert 0.0 <= delay_s <= cap_s
    return delay_s
