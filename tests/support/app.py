"""Building the app for in-process HTTP tests against a test database."""

from __future__ import annotations

import dataclasses
from typing import Any

from entitlements.settings import SealSettings, Settings


def settings_for(
    database_url: str,
    *,
    api_settings: dict[str, Any] | None = None,
    console_settings: dict[str, Any] | None = None,
    finance_settings: dict[str, Any] | None = None,
    seal_settings: SealSettings | None = None,
    rate_limits: dict[str, Any] | None = None,
    webhook_settings: dict[str, Any] | None = None,
    **generation: Any,
) -> Settings:
    """The environment's settings against this database, without a dispatcher unless asked; `api_settings`,
    `console_settings` and `rate_limits` replace fields of those concerns (limits, session expiry)."""
    base = Settings.from_env()
    return dataclasses.replace(
        base,
        database=dataclasses.replace(base.database, url=database_url, pool_size_max=20),
        generation=dataclasses.replace(base.generation, **({"dispatcher_enabled": False} | generation)),
        api=dataclasses.replace(base.api, **(api_settings or {})),
        console=dataclasses.replace(base.console, **(console_settings or {})),
        finance=dataclasses.replace(base.finance, **(finance_settings or {})),
        seal=seal_settings or base.seal,
        rate_limits=dataclasses.replace(base.rate_limits, **(rate_limits or {})),
        # No deliverer unless asked (the webhook tests start their own), receivers on loopback allowed.
        webhooks=dataclasses.replace(
            base.webhooks, **({"deliverer_enabled": False, "allow_private_urls": True} | (webhook_settings or {}))
        ),
    )
