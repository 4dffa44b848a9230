"""WorkerSettings: parsing the environment and the limits on every setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from generation_client.worker.settings import VIDEO_DIR_DEFAULT, WorkerSettings


def test_defaults_from_an_empty_environment() -> None:
    settings = WorkerSettings.from_env({})
    assert settings == WorkerSettings(
        video_dir=VIDEO_DIR_DEFAULT,
        image_dir=None,
        failure_rate=0.0,
        latency_ms=0,
        hang_rate=0.0,
        max_concurrent_renders=2,
        seed=None,
    )


def test_every_variable_read_and_round_tripped() -> None:
    environ = {
        "WORKER_VIDEO_DIR": "/srv/videos",
        "IMAGE_DIR": "/srv/images",
        "WORKER_FAILURE_RATE": "0.25",
        "WORKER_LATENCY_MS": "150",
        "WORKER_HANG_RATE": "0.5",
        "WORKER_MAX_CONCURRENT_RENDERS": "3",
        "WORKER_SEED": "42",
        "WORKER_ACTIVE_JOBS_MAX": "10",
    }
    settings = WorkerSettings.from_env(environ)
    assert settings == WorkerSettings(
        video_dir=Path("/srv/videos"),
        image_dir=Path("/srv/images"),
        failure_rate=0.25,
        latency_ms=150,
        hang_rate=0.5,
        max_concurrent_renders=3,
        seed=42,
        active_jobs_max=10,
    )
    assert WorkerSettings.from_env(settings.to_env()) == settings


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("WORKER_FAILURE_RATE", "1.01"),
        ("WORKER_FAILURE_RATE", "-0.1"),
        ("WORKER_FAILURE_RATE", "nan"),
        ("WORKER_FAILURE_RATE", "often"),
        ("WORKER_HANG_RATE", "2"),
        ("WORKER_LATENCY_MS", "-1"),
        ("WORKER_LATENCY_MS", "3600001"),
        ("WORKER_LATENCY_MS", "1.5"),
        ("WORKER_MAX_CONCURRENT_RENDERS", "0"),
        ("WORKER_MAX_CONCURRENT_RENDERS", "65"),
        ("WORKER_SEED", "abc"),
        ("WORKER_ACTIVE_JOBS_MAX", "0"),
    ],
)
def test_out_of_range_values_name_their_variable(variable: str, value: str) -> None:
    with pytest.raises(ValueError, match=variable):
        WorkerSettings.from_env({variable: value})


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("WORKER_FAILURE_RATE", "1"),
        ("WORKER_HANG_RATE", "1"),
        ("WORKER_LATENCY_MS", "3600000"),
        ("WORKER_MAX_CONCURRENT_RENDERS", "64"),
    ],
)
def test_values_at_their_limit_accepted(variable: str, value: str) -> None:
    WorkerSettings.from_env({variable: value})


def test_failure_and_hang_rates_cannot_sum_past_one() -> None:
    with pytest.raises(ValueError, match=r"WORKER_FAILURE_RATE.*WORKER_HANG_RATE"):
        WorkerSettings.from_env({"WORKER_FAILURE_RATE": "0.6", "WORKER_HANG_RATE": "0.5"})
