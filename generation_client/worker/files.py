"""Durable file replacement for the worker's videos and records."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable: without this a crash may forget the new name."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def partial_path(destination: Path, token: str) -> Path:
    """A temporary name beside `destination`: hidden, unique, and recognisable as a leftover."""
    return destination.with_name(f".{destination.name}.{token}.partial")
