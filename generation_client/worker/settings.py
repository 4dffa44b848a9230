"""The bundled worker's settings: one frozen dataclass, read once from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar, get_args

from generation_client.logs import LogFormat

VIDEO_DIR_DEFAULT: Final = Path(".data/worker-videos")
MAX_CONCURRENT_RENDERS_DEFAULT: Final = 2
ACTIVE_JOBS_MAX_DEFAULT: Final = 1_000
# Upper bounds that catch a typo (a latency in microseconds, a render count for another machine)
# rather than describe any real deployment.
LATENCY_MS_MAX: Final = 3_600_000
MAX_CONCURRENT_RENDERS_LIMIT: Final = 64
ACTIVE_JOBS_MAX_LIMIT: Final = 1_000_000

# Field name → environment variable, so that every validation error names both.
ENVIRONMENT_VARIABLES: Final = {
    "video_dir": "WORKER_VIDEO_DIR",
    "image_dir": "IMAGE_DIR",
    "failure_rate": "WORKER_FAILURE_RATE",
    "latency_ms": "WORKER_LATENCY_MS",
    "hang_rate": "WORKER_HANG_RATE",
    "max_concurrent_renders": "WORKER_MAX_CONCURRENT_RENDERS",
    "seed": "WORKER_SEED",
    "active_jobs_max": "WORKER_ACTIVE_JOBS_MAX",
    "instant": "WORKER_INSTANT",
}

_Number = TypeVar("_Number", int, float)


def _name(field_name: str) -> str:
    return f"{field_name} ({ENVIRONMENT_VARIABLES[field_name]})"


LOG_FORMATS: tuple[LogFormat, ...] = get_args(LogFormat)


@dataclass(frozen=True)
class WorkerSettings:
    """How the bundled worker renders and which faults it injects."""

    # Where finished videos (`<id>.mp4`) and job records (`<id>.json`) live. One worker process per
    # directory: the worker takes a lock on it at start-up.
    video_dir: Path
    # Source images `<image_id>.png|.jpg|.jpeg`; None, or a missing file, renders a generated pattern.
    image_dir: Path | None
    # Probability (0..1) that a job ends `failed` with error "injected_failure".
    failure_rate: float
    # Extra delay before a job completes (succeeded or failed), in milliseconds; it does not hold a
    # render slot, so a large latency slows jobs down without starving the renderer.
    latency_ms: int
    # Probability (0..1) that a job stays `running` forever: a hung model. failure_rate + hang_rate <= 1.
    hang_rate: float
    # Renders running at once (each in its own thread); further jobs wait `queued`.
    max_concurrent_renders: int = MAX_CONCURRENT_RENDERS_DEFAULT
    # Seed of the fault-injection draws; None draws from the OS. Fates are recorded per job either way.
    seed: int | None = None
    # Jobs queued or running (hung ones excepted) at once; a submit past it answers 503, retryable.
    active_jobs_max: int = ACTIVE_JOBS_MAX_DEFAULT
    # "json", "console", or "auto" (console on a terminal, JSON otherwise), as the API's LOG_FORMAT.
    log_format: LogFormat = "auto"
    # Fault-free and at once: every job succeeds in its submit, with a clip rendered once per resolution,
    # duration and audio and then shared. For measuring the dispatcher, never for a real deployment.
    instant: bool = False

    def __post_init__(self) -> None:
        if self.instant and (self.failure_rate or self.hang_rate or self.latency_ms):
            raise ValueError(f"{_name('instant')} is fault-free: it takes no failure rate, hang rate or latency")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, got {self.log_format}")
        if not 0.0 <= self.failure_rate <= 1.0:
            raise ValueError(f"{_name('failure_rate')} must be within 0..1, got {self.failure_rate}")
        if not 0.0 <= self.hang_rate <= 1.0:
            raise ValueError(f"{_name('hang_rate')} must be within 0..1, got {self.hang_rate}")
        if self.failure_rate + self.hang_rate > 1.0:
            raise ValueError(
                f"{_name('failure_rate')} + {_name('hang_rate')} must be <= 1, "
                f"got {self.failure_rate} + {self.hang_rate}"
            )
        if not 0 <= self.latency_ms <= LATENCY_MS_MAX:
            raise ValueError(f"{_name('latency_ms')} must be within 0..{LATENCY_MS_MAX}, got {self.latency_ms}")
        if not 1 <= self.max_concurrent_renders <= MAX_CONCURRENT_RENDERS_LIMIT:
            raise ValueError(
                f"{_name('max_concurrent_renders')} must be within 1..{MAX_CONCURRENT_RENDERS_LIMIT}, "
                f"got {self.max_concurrent_renders}"
            )
        if not 1 <= self.active_jobs_max <= ACTIVE_JOBS_MAX_LIMIT:
            raise ValueError(
                f"{_name('active_jobs_max')} must be within 1..{ACTIVE_JOBS_MAX_LIMIT}, got {self.active_jobs_max}"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerSettings:
        """Read the settings from `environ` (default: the process environment)."""
        env = os.environ if environ is None else environ
        image_dir = env.get("IMAGE_DIR", "").strip()
        seed = env.get("WORKER_SEED", "").strip()
        return cls(
            video_dir=Path(env.get("WORKER_VIDEO_DIR", "").strip() or VIDEO_DIR_DEFAULT),
            image_dir=Path(image_dir) if image_dir else None,
            failure_rate=_parse(env, "WORKER_FAILURE_RATE", float, 0.0),
            latency_ms=_parse(env, "WORKER_LATENCY_MS", int, 0),
            hang_rate=_parse(env, "WORKER_HANG_RATE", float, 0.0),
            max_concurrent_renders=_parse(env, "WORKER_MAX_CONCURRENT_RENDERS", int, MAX_CONCURRENT_RENDERS_DEFAULT),
            seed=_parse(env, "WORKER_SEED", int, 0) if seed else None,
            active_jobs_max=_parse(env, "WORKER_ACTIVE_JOBS_MAX", int, ACTIVE_JOBS_MAX_DEFAULT),
            log_format=env.get("LOG_FORMAT", "").strip() or "auto",  # type: ignore[arg-type]
            instant=_flag(env, "WORKER_INSTANT"),
        )

    def to_env(self) -> dict[str, str]:
        """The environment variables that `from_env` reads back into these settings.

        `serve` passes settings to the granian-spawned process this way: the environment is the one
        channel that survives both fork and spawn. IMAGE_DIR and WORKER_SEED map None to "" (unset).
        """
        return {
            "WORKER_VIDEO_DIR": str(self.video_dir),
            "IMAGE_DIR": "" if self.image_dir is None else str(self.image_dir),
            "WORKER_FAILURE_RATE": repr(self.failure_rate),
            "WORKER_LATENCY_MS": str(self.latency_ms),
            "WORKER_HANG_RATE": repr(self.hang_rate),
            "WORKER_MAX_CONCURRENT_RENDERS": str(self.max_concurrent_renders),
            "WORKER_SEED": "" if self.seed is None else str(self.seed),
            "WORKER_ACTIVE_JOBS_MAX": str(self.active_jobs_max),
            "LOG_FORMAT": self.log_format,
            "WORKER_INSTANT": "true" if self.instant else "false",
        }


def _flag(env: Mapping[str, str], variable: str) -> bool:
    raw = env.get(variable, "").strip().lower()
    if raw in {"", "0", "false", "no", "off"}:
        return False
    if raw in {"1", "true", "yes", "on"}:
        return True
    raise ValueError(f"{variable} must be true or false, got {raw!r}")


def _parse(env: Mapping[str, str], variable: str, parse: type[_Number], default: _Number) -> _Number:
    raw = env.get(variable, "").strip()
    if not raw:
        return default
    try:
        return parse(raw)
    except ValueError:
        raise ValueError(f"{variable} must be {'an integer' if parse is int else 'a number'}, got {raw!r}") from None
