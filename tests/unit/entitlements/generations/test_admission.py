"""Admission control's decision (pure): refused only when the queue is deeper or older than the workers can
finish within a hold's lifetime, and with a Retry-After that says how long the excess takes to drain."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from entitlements.generations.admission import (
    HOLD_SHARE,
    RETRY_AFTER_S_MAX,
    RETRY_AFTER_S_MIN,
    RETRY_AFTER_S_UNKNOWN,
    QueueStats,
    refusal,
    render_estimate_s,
)
from entitlements.settings import GenerationSettings

SETTINGS = dataclasses.replace(
    GenerationSettings.from_env(),
    hold_ttl_s=100,
    render_timeout_s=50,
    poll_interval_s=0.5,
    admission_queue_depth_min=10,
    admission_queue_depth_max=1000,
    admission_window_s=10,
)


def stats(
    *, depth: int, finished: int = 20, oldest_queued_s: float = 0.0, render_avg_s: float | None = 4.0
) -> QueueStats:
    return QueueStats(
        depth=depth,
        oldest_queued_s=oldest_queued_s,
        finished=finished,
        render_avg_s=render_avg_s,
        holds_open=depth,
        held_moments=depth * 200,
    )


# 20 jobs ended in 10 s: 2 per second. A new job's budget is 80 s less a 4 s render: 76 s, so 152 jobs.
ACCEPTABLE_DEPTH = (SETTINGS.hold_ttl_s * HOLD_SHARE - 4.0) * 2


def test_a_short_queue_is_never_refused_even_with_nothing_finished() -> None:
    assert refusal(stats(depth=9, finished=0), SETTINGS) is None
    assert refusal(stats(depth=9, finished=0, oldest_queued_s=10_000), SETTINGS) is None


def test_past_the_floor_with_no_throughput_measured_is_refused() -> None:
    assert refusal(stats(depth=10, finished=0), SETTINGS) == RETRY_AFTER_S_UNKNOWN


def test_the_depth_the_workers_can_finish_in_time_is_the_line() -> None:
    assert refusal(stats(depth=int(ACCEPTABLE_DEPTH) - 1), SETTINGS) is None
    retry_after_s = refusal(stats(depth=int(ACCEPTABLE_DEPTH)), SETTINGS)
    assert retry_after_s == RETRY_AFTER_S_MIN
    # 100 jobs over the line drain in 50 s at 2 per second.
    assert refusal(stats(depth=int(ACCEPTABLE_DEPTH) + 99), SETTINGS) == 50


def test_an_old_queue_is_refused_however_short() -> None:
    assert refusal(stats(depth=20, oldest_queued_s=75.9), SETTINGS) is None
    assert refusal(stats(depth=20, oldest_queued_s=76.0), SETTINGS) is not None


def test_the_hard_maximum_refuses_whatever_the_throughput() -> None:
    assert refusal(stats(depth=999, finished=100_000), SETTINGS) is None
    assert refusal(stats(depth=1000, finished=100_000), SETTINGS) == RETRY_AFTER_S_MIN


def test_what_this_process_admitted_since_the_last_read_counts() -> None:
    below = int(ACCEPTABLE_DEPTH) - 5
    assert refusal(stats(depth=below), SETTINGS) is None
    assert refusal(stats(depth=below), SETTINGS, admitted_since_read=5) is not None


def test_a_render_is_expected_to_take_its_measured_mean_bounded() -> None:
    assert render_estimate_s(stats(depth=1, render_avg_s=None), SETTINGS) == SETTINGS.poll_interval_s
    assert render_estimate_s(stats(depth=1, render_avg_s=0.01), SETTINGS) == SETTINGS.poll_interval_s
    assert render_estimate_s(stats(depth=1, render_avg_s=7.5), SETTINGS) == 7.5
    assert render_estimate_s(stats(depth=1, render_avg_s=10_000), SETTINGS) == SETTINGS.render_timeout_s


@pytest.mark.parametrize("render_avg_s", [None, 1.0, 79.0, 10_000.0])
def test_a_render_longer_than_the_budget_refuses_past_the_floor(render_avg_s: float | None) -> None:
    # Whatever the render length, nothing below the floor is refused, and the answer is a bounded wait.
    assert refusal(stats(depth=5, render_avg_s=render_avg_s), SETTINGS) is None
    answer = refusal(stats(depth=500, render_avg_s=render_avg_s), SETTINGS)
    assert answer is not None
    assert RETRY_AFTER_S_MIN <= answer <= RETRY_AFTER_S_MAX


@given(
    depth=st.integers(0, 10_000),
    finished=st.integers(0, 10_000),
    oldest_queued_s=st.floats(0, 1e6),
    render_avg_s=st.none() | st.floats(0, 1e6),
    admitted=st.integers(0, 1000),
)
def test_refusal_is_monotonic_in_depth_and_its_wait_is_bounded(
    depth: int, finished: int, oldest_queued_s: float, render_avg_s: float | None, admitted: int
) -> None:
    queue = stats(depth=depth, finished=finished, oldest_queued_s=oldest_queued_s, render_avg_s=render_avg_s)
    answer = refusal(queue, SETTINGS, admitted_since_read=admitted)
    if answer is not None:
        assert RETRY_AFTER_S_MIN <= answer <= RETRY_AFTER_S_MAX
        # A deeper queue of the same throughput and age is refused too.
        assert refusal(dataclasses.replace(queue, depth=depth + 1), SETTINGS, admitted_since_read=admitted)
    else:
        assert depth + admitted < SETTINGS.admission_queue_depth_max
