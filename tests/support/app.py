"""Building the app for in-process HTTP tests against a test database."""

from __future__ import annotations

import dataclasses
from typing import Any

from entitlements.settings import Settings


def settings_for(database_url: str, **generation: Any) -> Settings:
    base = Settings.from_env()
    return dataclasses.replace(
        base,
        database=dataclasses.replace(base.database, url=database_url, pool_size_max=20),
        generation=dataclasses.replace(base.generation, **({"dispatcher_enabled": False} | generation)),
    )
