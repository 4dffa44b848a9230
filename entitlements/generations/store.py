"""The video store (`VIDEO_DIR`): whether delivered videos can be written there, for /readyz and /metrics.

A process whose dispatcher cannot store videos would render them and fail every generation
(`video_store_failed`, the moments given back): operators see it at once, as `/readyz` answering 503
and `moments_video_store_writable 0`.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path

import structlog
from prometheus_client import Gauge

WRITABLE = Gauge("moments_video_store_writable", "1 when VIDEO_DIR accepts a new file, 0 when it does not")
log = structlog.get_logger("moments.video_store")


def _probe(directory: Path) -> None:
    """Creates the directory if needed, then writes, syncs and removes a small file in it."""
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / f".probe-{secrets.token_hex(8)}"
    try:
        with probe.open("xb") as file:
            file.write(b"probe")
            file.flush()
            os.fsync(file.fileno())
    finally:
        probe.unlink(missing_ok=True)


class VideoStore:
    """`required`: this process stores videos (its dispatcher runs), so an unusable store makes it unready."""

    def __init__(self, directory: Path, *, required: bool) -> None:
        self.directory = directory
        self.required = required

    async def unusable_because(self) -> str | None:
        """None when a video can be stored now; else why not (the operating system's words)."""
        try:
            await asyncio.to_thread(_probe, self.directory)
        except OSError as error:
            self.record_failure(error)
            return describe(error)
        WRITABLE.set(1)
        return None

    def record_failure(self, error: OSError) -> None:
        WRITABLE.set(0)
        log.warning("video_store_unusable", directory=str(self.directory), error=describe(error))

    def record_success(self) -> None:
        WRITABLE.set(1)


def describe(error: OSError) -> str:
    return f"{type(error).__name__}: {error.strerror or error}"
